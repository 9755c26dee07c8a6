// ARM per-row kernels: NEON with the dot-product instructions (armv8.2-a+dotprod, vdotq_s32).
// Same activation layout as the portable kernels (common.h ActView), so no QuantizeFn of its own.
// Compiles to nothing off aarch64; dispatch.cpp stacks it only when the CPU has ASIMDDP (cpu.cpp).
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

namespace {

// One 32-weight block of int8 against 32 int8 activations: two sdot of 16 lanes each.
static inline int32_t dot32(const int8_t* w, const int8_t* a) {
    int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vld1q_s8(w), vld1q_s8(a));
    acc = vdotq_s32(acc, vld1q_s8(w + 16), vld1q_s8(a + 16));
    return vaddvq_s32(acc);
}

float dot_q8_0(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ8_0* b = (const BlockQ8_0*)w;
    float s = 0;
    for (int i = 0; i < n / 32; i++) s += fp16_to_f32(b[i].d) * av.d[i] * (float)dot32(b[i].qs, av.qs + i * 32);
    return s;
}

// Q4_0: nibbles unpacked to 0..15 (low half: weights 0-15, high half: 16-31); the -8 offset is
// taken out afterwards with the activation sums, as the portable kernel does, so sdot sees u4 as s8.
float dot_q4_0(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ4_0* b = (const BlockQ4_0*)w;
    const uint8x16_t m4 = vdupq_n_u8(0xF);
    float s = 0;
    for (int i = 0; i < n / 32; i++) {
        const uint8x16_t q = vld1q_u8(b[i].qs);
        const int8_t* x = av.qs + i * 32;
        int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(q, m4)), vld1q_s8(x));
        acc = vdotq_s32(acc, vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vld1q_s8(x + 16));
        const int32_t sum = vaddvq_s32(acc) - 8 * (av.sum16[2 * i] + av.sum16[2 * i + 1]);
        s += fp16_to_f32(b[i].d) * av.d[i] * (float)sum;
    }
    return s;
}

template <float (*Dot)(const uint8_t*, const void*, int)>
int rows(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
         float* out, size_t out_stride) {
    for (int r = 0; r < nrows; r++)
        for (int t = 0; t < ntok; t++) out[t * out_stride + r] = Dot(w + r * row_bytes, acts[t], n);
    return nrows;
}

}  // namespace

const RowsFn neon::rows_q8_0 = rows<dot_q8_0>;
const RowsFn neon::rows_q4_0 = rows<dot_q4_0>;
#endif
