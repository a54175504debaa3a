// Shared device code of the preprocessing kernels: pixel readers and the supersampled affine warp, exactly as
// src/preprocess/mod.rs defines them (the CPU reference in src/preprocess/cpu.rs is the oracle). Compiled with
// --fmad=false so every product and sum rounds as the CPU's does: the GPU output is then the reference's, bit
// for bit, barring libm differences in floorf/sqrtf (there are none: both are exact in IEEE arithmetic).
//
// The same text is built for the host by a C++ compiler over kernels/host_shim.h (a loop over the grid) for
// the host tests; so: no CUDA-only syntax outside the DG_* macros, no templates the shim cannot expand.
//
// Bounds: every read is checked against the frame's byte length (a sample outside reads black), every write
// against the output size; the launchers check the same things before they launch.

#define DG_FORMAT_RGB24 0
#define DG_FORMAT_BGR24 1
#define DG_FORMAT_GREY 2
#define DG_FORMAT_YUYV 3
#define DG_FORMAT_UYVY 4
#define DG_FORMAT_NV12 5

#define DG_LAYOUT_NHWC 0
#define DG_LAYOUT_NCHW 1

#define DG_MAX_TAPS 4

// A frame in device (or mapped host) memory. `bytes` is the length of `data` the frame may be read from.
struct DgFrame {
    const unsigned char* data;
    unsigned long long bytes;
    int width;
    int height;
    int stride;
    int format;
};

// Output pixel (u, v), continuous coordinates → source: (a u + b v + tx, c u + d v + ty).
struct DgMap {
    float a, b, c, d, tx, ty;
};

// How normalised values are written: value = pixel[channel_of(c)] * scale[c] - shift[c], where
// channel_of(c) = c for RGB models and 2 - c for BGR ones (the host computes scale and shift as the CPU does).
struct DgNorm {
    float scale[3];
    float shift[3];
    int layout;
    int bgr;
};

DG_DEVICE inline float dg_clamp255(float value) {
    return fminf(fmaxf(value, 0.0f), 255.0f);
}

// BT.601 limited range to RGB, clamped to [0, 255], unrounded.
DG_DEVICE inline void dg_yuv_to_rgb(unsigned char y, unsigned char u, unsigned char v, float* rgb) {
    float luma = 1.164383f * ((float)y - 16.0f);
    float cu = (float)u - 128.0f;
    float cv = (float)v - 128.0f;
    rgb[0] = dg_clamp255(luma + 1.596027f * cv);
    rgb[1] = dg_clamp255(luma - 0.391762f * cu - 0.812968f * cv);
    rgb[2] = dg_clamp255(luma + 2.017232f * cu);
}

DG_DEVICE inline unsigned char dg_byte(const DgFrame* frame, unsigned long long index) {
    return index < frame->bytes ? frame->data[index] : (unsigned char)0;
}

// One source pixel as unrounded RGB. (x, y) are inside the frame; the byte reads are checked all the same.
DG_DEVICE inline void dg_read(const DgFrame* frame, int x, int y, float* rgb) {
    unsigned long long stride = (unsigned long long)frame->stride;
    unsigned long long row = (unsigned long long)y * stride;
    switch (frame->format) {
    case DG_FORMAT_RGB24:
    case DG_FORMAT_BGR24: {
        unsigned long long i = row + (unsigned long long)x * 3;
        int swap = frame->format == DG_FORMAT_BGR24;
        rgb[swap ? 2 : 0] = (float)dg_byte(frame, i);
        rgb[1] = (float)dg_byte(frame, i + 1);
        rgb[swap ? 0 : 2] = (float)dg_byte(frame, i + 2);
        break;
    }
    case DG_FORMAT_GREY: {
        float value = (float)dg_byte(frame, row + (unsigned long long)x);
        rgb[0] = value;
        rgb[1] = value;
        rgb[2] = value;
        break;
    }
    case DG_FORMAT_YUYV: {
        unsigned long long pair = row + (unsigned long long)(x / 2) * 4;
        dg_yuv_to_rgb(dg_byte(frame, pair + (x & 1) * 2), dg_byte(frame, pair + 1), dg_byte(frame, pair + 3), rgb);
        break;
    }
    case DG_FORMAT_UYVY: {
        unsigned long long pair = row + (unsigned long long)(x / 2) * 4;
        dg_yuv_to_rgb(dg_byte(frame, pair + 1 + (x & 1) * 2), dg_byte(frame, pair), dg_byte(frame, pair + 2), rgb);
        break;
    }
    case DG_FORMAT_NV12: {
        unsigned long long chroma = stride * (unsigned long long)frame->height +
                                    (unsigned long long)(y / 2) * stride + (unsigned long long)(x / 2) * 2;
        dg_yuv_to_rgb(dg_byte(frame, row + (unsigned long long)x), dg_byte(frame, chroma),
                      dg_byte(frame, chroma + 1), rgb);
        break;
    }
    default:
        rgb[0] = 0.0f;
        rgb[1] = 0.0f;
        rgb[2] = 0.0f;
    }
}

// Output pixel (column, row) of the warp through `map` with `taps` samples per axis, rounded to 8 bits.
DG_DEVICE inline void dg_warp_pixel(const DgFrame* frame, DgMap map, int taps, int column, int row,
                                    unsigned char* out) {
    float step = 1.0f / (float)taps;
    float weight = 1.0f / (float)(taps * taps);
    float source_width = (float)frame->width;
    float source_height = (float)frame->height;
    int last_x = frame->width - 1;
    int last_y = frame->height - 1;
    float sum[3] = {0.0f, 0.0f, 0.0f};
    for (int j = 0; j < taps; j++) {
        float v = (float)row + ((float)j + 0.5f) * step;
        for (int i = 0; i < taps; i++) {
            float u = (float)column + ((float)i + 0.5f) * step;
            float sx = map.a * u + map.b * v + map.tx;
            float sy = map.c * u + map.d * v + map.ty;
            // Outside the source: black. The negated test also catches NaN from a degenerate map.
            if (!(sx >= 0.0f && sy >= 0.0f && sx < source_width && sy < source_height)) {
                continue;
            }
            float x = sx - 0.5f;
            float y = sy - 0.5f;
            float x0 = floorf(x);
            float y0 = floorf(y);
            float fx = x - x0;
            float fy = y - y0;
            int xa = min((int)fmaxf(x0, 0.0f), last_x);
            int xb = min((int)fmaxf(x0 + 1.0f, 0.0f), last_x);
            int ya = min((int)fmaxf(y0, 0.0f), last_y);
            int yb = min((int)fmaxf(y0 + 1.0f, 0.0f), last_y);
            float p00[3], p10[3], p01[3], p11[3];
            dg_read(frame, xa, ya, p00);
            dg_read(frame, xb, ya, p10);
            dg_read(frame, xa, yb, p01);
            dg_read(frame, xb, yb, p11);
            for (int c = 0; c < 3; c++) {
                float top = p00[c] + (p10[c] - p00[c]) * fx;
                float bottom = p01[c] + (p11[c] - p01[c]) * fx;
                sum[c] += top + (bottom - top) * fy;
            }
        }
    }
    for (int c = 0; c < 3; c++) {
        out[c] = (unsigned char)dg_clamp255(sum[c] * weight + 0.5f);
    }
}

// Writes one pixel's normalised values at (column, row) of a width x height tensor starting at `out`.
DG_DEVICE inline void dg_store(const unsigned char* rgb, DgNorm norm, int column, int row, int width, int height,
                               float* out) {
    unsigned long long plane = (unsigned long long)width * (unsigned long long)height;
    unsigned long long index = (unsigned long long)row * (unsigned long long)width + (unsigned long long)column;
    for (int c = 0; c < 3; c++) {
        float value = (float)rgb[norm.bgr ? 2 - c : c] * norm.scale[c] - norm.shift[c];
        if (norm.layout == DG_LAYOUT_NCHW) {
            out[(unsigned long long)c * plane + index] = value;
        } else {
            out[index * 3 + c] = value;
        }
    }
}
