// The kernels built for the host (tests only; see host_shim.h): C entry points with the same arguments as the
// GPU launches, so the Rust tests call them through the same argument structs the CUDA launchers fill in.
#include "host_shim.h"
#include "warp.cuh"
#include "letterbox.cu"
#include "crops.cu"

extern "C" void dg_host_letterbox(DgFrame frame, DgMap map, int taps, DgNorm norm, int width, int height,
                                  float* out, int block_x, int block_y) {
    DgIndex block = {block_x, block_y, 1};
    DgIndex grid = {(width + block_x - 1) / block_x, (height + block_y - 1) / block_y, 1};
    DG_HOST_LAUNCH(grid, block, dg_letterbox(frame, map, taps, norm, width, height, out));
}

extern "C" void dg_host_crops(DgFrame frame, const DgCrop* crops, int count, DgNorm norm, float* tensors,
                              unsigned long long tensor_len, unsigned char* images, unsigned long long image_len,
                              int grid_x, int grid_y, int block_x, int block_y) {
    DgIndex block = {block_x, block_y, 1};
    DgIndex grid = {grid_x, grid_y, count};
    DG_HOST_LAUNCH(grid, block,
                   dg_crops(frame, crops, count, norm, tensors, tensor_len, images, image_len));
}
