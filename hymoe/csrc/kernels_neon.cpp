// ARM per-row kernels: NEON with the dot-product instructions (armv8.2-a+dotprod, vdotq_s32).
// Same activation layout as the portable kernels (common.h ActView), so no QuantizeFn of its own.
// Compiles to nothing off aarch64; dispatch.cpp stacks it only when the CPU has ASIMDDP (cpu.cpp).
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "iq1s_grid.h"
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

// 32 u4 (or u5) weights, 0..31, against 32 int8 activations; sdot reads them as s8, exact.
static inline int32_t dot32u(uint8x16_t w0, uint8x16_t w1, const int8_t* a) {
    int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(w0), vld1q_s8(a));
    acc = vdotq_s32(acc, vreinterpretq_s8_u8(w1), vld1q_s8(a + 16));
    return vaddvq_s32(acc);
}

// Q4_K / Q5_K: 8 sub-blocks of 32; sub-block j is the low (even j) or high (odd j) nibbles of
// the 32 bytes at (j / 2) * 32, plus for Q5_K bit j of qh[l] as the 5th bit (vtst: 0 or 16).
// The mins go with the activations' per-32 sums, as in the portable kernel.
template <bool kFive>
float dot_qk45(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const size_t block_bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
    const uint8x16_t m4 = vdupq_n_u8(0xF), b4 = vdupq_n_u8(16);
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        const uint8_t* blk = w + i * block_bytes;
        uint16_t dh, dminh;
        memcpy(&dh, blk, 2);
        memcpy(&dminh, blk + 2, 2);
        const uint8_t* scales = blk + 4;
        const uint8_t* qs = kFive ? blk + 48 : blk + 16;
        uint8x16_t h0 = vdupq_n_u8(0), h1 = vdupq_n_u8(0);
        if (kFive) h0 = vld1q_u8(blk + 16), h1 = vld1q_u8(blk + 32);
        int32_t dot = 0, mins = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            k_scale_min(scales, j, &sc, &m);
            uint8x16_t q0 = vld1q_u8(qs + (j / 2) * 32), q1 = vld1q_u8(qs + (j / 2) * 32 + 16);
            if (j & 1) q0 = vshrq_n_u8(q0, 4), q1 = vshrq_n_u8(q1, 4);
            q0 = vandq_u8(q0, m4), q1 = vandq_u8(q1, m4);
            if (kFive) {
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << j));
                q0 = vorrq_u8(q0, vandq_u8(vtstq_u8(h0, bit), b4));
                q1 = vorrq_u8(q1, vandq_u8(vtstq_u8(h1, bit), b4));
            }
            dot += sc * dot32u(q0, q1, av.qk + i * 256 + j * 32);
            mins += m * av.bk32[i * 8 + j];
        }
        s += av.dk[i] * (fp16_to_f32(dh) * (float)dot - fp16_to_f32(dminh) * (float)mins);
    }
    return s;
}

// 16 u6 weights (0..63) against 16 int8 activations.
static inline int32_t dot16u(uint8x16_t w, const int8_t* a) {
    return vaddvq_s32(vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(w), vld1q_s8(a)));
}

// Q6_K: per half h (128 weights) and quarter s4 (32): low 4 bits from ql (low or high nibble),
// top 2 from qh; 16 weights per int8 scale; the -32 offset by the activations' per-16 sums.
float dot_q6_k(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockQ6_K* b = (const BlockQ6_K*)w;
    const uint8x16_t m4 = vdupq_n_u8(0xF), m2 = vdupq_n_u8(0x30);
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        int32_t dot = 0;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t qh0 = vld1q_u8(b[i].qh + h * 32), qh1 = vld1q_u8(b[i].qh + h * 32 + 16);
            for (int s4 = 0; s4 < 4; s4++) {
                const uint8_t* ql = b[i].ql + h * 64 + (s4 & 1) * 32;
                uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
                if (s4 >> 1) l0 = vshrq_n_u8(l0, 4), l1 = vshrq_n_u8(l1, 4);
                const int8x16_t sh = vdupq_n_s8((int8_t)(4 - 2 * s4));  // qh bits 2*s4.. to bits 4-5
                const uint8x16_t w0 = vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_u8(qh0, sh), m2));
                const uint8x16_t w1 = vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_u8(qh1, sh), m2));
                const int g = h * 8 + s4 * 2, k = h * 128 + s4 * 32;
                dot += b[i].scales[g] * (dot16u(w0, av.qk + i * 256 + k) - 32 * av.bk16[i * 16 + g]);
                dot += b[i].scales[g + 1] * (dot16u(w1, av.qk + i * 256 + k + 16) - 32 * av.bk16[i * 16 + g + 1]);
            }
        }
        s += av.dk[i] * fp16_to_f32(b[i].d) * (float)dot;
    }
    return s;
}

// IQ1_S: each 8 weights one int8 codebook entry (a uint64, little-endian bytes), four of them make
// the 32 lanes of two sdot; the delta goes with the activations' per-16 sums, as in the portable kernel.
static inline uint64_t iq1s_entry(const BlockIQ1_S& b, int ib, int l) {
    return kIq1sGrid[b.qs[ib * 4 + l] | (((b.qh[ib] >> (3 * l)) & 7) << 8)];
}

float dot_iq1_s(const uint8_t* w, const void* a, int n) {
    ActView av = act_view(a, n);
    const BlockIQ1_S* b = (const BlockIQ1_S*)w;
    float s = 0;
    for (int i = 0; i < n / 256; i++) {
        const float d = fp16_to_f32(b[i].d);
        for (int ib = 0; ib < 8; ib++) {
            const uint16_t qh = b[i].qh[ib];
            const float dl = d * (2 * ((qh >> 12) & 7) + 1);
            const float delta = (qh & 0x8000) ? -0.125f : 0.125f;
            const int8x16_t w0 = vcombine_s8(vcreate_s8(iq1s_entry(b[i], ib, 0)), vcreate_s8(iq1s_entry(b[i], ib, 1)));
            const int8x16_t w1 = vcombine_s8(vcreate_s8(iq1s_entry(b[i], ib, 2)), vcreate_s8(iq1s_entry(b[i], ib, 3)));
            const int blk32 = i * 8 + ib;
            const int8_t* q = av.qs + blk32 * 32;
            const int32_t acc = vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, vld1q_s8(q)), w1, vld1q_s8(q + 16)));
            const int32_t sum = av.sum16[2 * blk32] + av.sum16[2 * blk32 + 1];
            s += av.d[blk32] * dl * ((float)acc + delta * (float)sum);
        }
    }
    return s;
}

}  // namespace

const RowsFn neon::rows_q8_0 = rows_by_dot<dot_q8_0>;
const RowsFn neon::rows_q4_0 = rows_by_dot<dot_q4_0>;
const RowsFn neon::rows_q4_k = rows_by_dot<dot_qk45<false>>;
const RowsFn neon::rows_q5_k = rows_by_dot<dot_qk45<true>>;
const RowsFn neon::rows_q6_k = rows_by_dot<dot_q6_k>;
const RowsFn neon::rows_iq1_s = rows_by_dot<dot_iq1_s>;
#endif
