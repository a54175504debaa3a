// Frame → detector input in one pass: each thread reads the source samples of one input pixel, converts their
// colour, resamples (letterbox: the border outside the frame is black), rounds to 8 bits as the reference does
// and writes the normalised values in the detector's layout. Preceded by warp.cuh (see it for the definition).

DG_EXTERN_C DG_GLOBAL void dg_letterbox(DgFrame frame, DgMap map, int taps, DgNorm norm, int width, int height,
                                        float* out) {
    int column = DG_BLOCK_X * DG_BLOCK_DIM_X + DG_THREAD_X;
    int row = DG_BLOCK_Y * DG_BLOCK_DIM_Y + DG_THREAD_Y;
    if (column >= width || row >= height) {
        return;
    }
    unsigned char rgb[3];
    dg_warp_pixel(&frame, map, taps, column, row, rgb);
    dg_store(rgb, norm, column, row, width, height, out);
}
