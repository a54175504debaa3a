// Frame + the faces found → every crop of the frame in one launch: one job per crop (grid z), each an aligned
// similarity warp of the frame written either as normalised floats in the classifier's layout or as 8-bit RGB
// (the small crop the quality gates measure). Preceded by warp.cuh (see it for the definition).

// One crop. `offset` counts elements of the output it writes: floats for a tensor, bytes for an RGB image.
struct DgCrop {
    DgMap map;
    int taps;
    int width;
    int height;
    int rgb; // 1: 8-bit RGB into `images`; 0: normalised floats into `tensors`
    unsigned long long offset;
};

DG_EXTERN_C DG_GLOBAL void dg_crops(DgFrame frame, const DgCrop* crops, int count, DgNorm norm, float* tensors,
                                    unsigned long long tensor_len, unsigned char* images,
                                    unsigned long long image_len) {
    int job = DG_BLOCK_Z;
    if (job >= count) {
        return;
    }
    DgCrop crop = crops[job];
    int column = DG_BLOCK_X * DG_BLOCK_DIM_X + DG_THREAD_X;
    int row = DG_BLOCK_Y * DG_BLOCK_DIM_Y + DG_THREAD_Y;
    if (column >= crop.width || row >= crop.height) {
        return;
    }
    unsigned long long pixels = (unsigned long long)crop.width * (unsigned long long)crop.height;
    unsigned char rgb[3];
    if (crop.rgb) {
        if (crop.offset + pixels * 3 > image_len) {
            return;
        }
        dg_warp_pixel(&frame, crop.map, crop.taps, column, row, rgb);
        unsigned long long index = crop.offset + ((unsigned long long)row * crop.width + column) * 3;
        images[index] = rgb[0];
        images[index + 1] = rgb[1];
        images[index + 2] = rgb[2];
    } else {
        if (crop.offset + pixels * 3 > tensor_len) {
            return;
        }
        dg_warp_pixel(&frame, crop.map, crop.taps, column, row, rgb);
        dg_store(rgb, norm, column, row, crop.width, crop.height, tensors + crop.offset);
    }
}
