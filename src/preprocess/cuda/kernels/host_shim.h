// The host build of the kernels, for the host tests only: the DG_* names as plain C++, and a launch that runs
// every block and thread of the grid in loops (the kernels keep no shared memory and never synchronise, so the
// order does not matter). Included before warp.cuh by host.cpp; never part of the runtime.
#include <math.h>

struct DgIndex {
    int x, y, z;
};

// The "built-in" indices of the thread being run. One thread at a time, so plain globals suffice.
static DgIndex dg_block, dg_block_dim, dg_thread;

// CUDA's integer min(), which device code has built in.
static inline int min(int a, int b) {
    return a < b ? a : b;
}

#define DG_DEVICE static
#define DG_GLOBAL static
#define DG_EXTERN_C
#define DG_BLOCK_X dg_block.x
#define DG_BLOCK_Y dg_block.y
#define DG_BLOCK_Z dg_block.z
#define DG_BLOCK_DIM_X dg_block_dim.x
#define DG_BLOCK_DIM_Y dg_block_dim.y
#define DG_THREAD_X dg_thread.x
#define DG_THREAD_Y dg_thread.y

// Runs `call` once per thread of a grid x block launch.
#define DG_HOST_LAUNCH(grid, block, call)                                                                    \
    do {                                                                                                      \
        dg_block_dim = (block);                                                                               \
        for (dg_block.z = 0; dg_block.z < (grid).z; dg_block.z++)                                             \
            for (dg_block.y = 0; dg_block.y < (grid).y; dg_block.y++)                                         \
                for (dg_block.x = 0; dg_block.x < (grid).x; dg_block.x++)                                     \
                    for (dg_thread.y = 0; dg_thread.y < dg_block_dim.y; dg_thread.y++)                        \
                        for (dg_thread.x = 0; dg_thread.x < dg_block_dim.x; dg_thread.x++) {                  \
                            dg_thread.z = 0;                                                                  \
                            call;                                                                             \
                        }                                                                                     \
    } while (0)
