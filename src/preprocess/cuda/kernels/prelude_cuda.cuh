// Prepended to the kernels when NVRTC compiles them for the GPU: the DG_* names warp.cuh and the kernels use.
#define DG_DEVICE __device__
#define DG_GLOBAL __global__
#define DG_EXTERN_C extern "C"
#define DG_BLOCK_X ((int)blockIdx.x)
#define DG_BLOCK_Y ((int)blockIdx.y)
#define DG_BLOCK_Z ((int)blockIdx.z)
#define DG_BLOCK_DIM_X ((int)blockDim.x)
#define DG_BLOCK_DIM_Y ((int)blockDim.y)
#define DG_THREAD_X ((int)threadIdx.x)
#define DG_THREAD_Y ((int)threadIdx.y)
