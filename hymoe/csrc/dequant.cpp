// Rows of a block-format matrix decoded to float32: the token embeddings of a GGUF file, which stay
// in their format and are decoded a looked-up row at a time (torch's ~20 small operations for one
// row cost ~0.2 ms of a decode step). Plain C++; the values are gguf-py's, bit for bit: every
// product below is of a half-precision scale and small integers, so exact in float32.
#include "linear.h"
#include "lowbit_iq2_scalar.h"
#include "lowbit_iq3_scalar.h"
#include "lowbit_kquants_scalar.h"
#include "lowbit_legacy_scalar.h"

namespace {

typedef void (*RowFn)(const uint8_t* w, int n, float* out);

void row_f32(const uint8_t* w, int n, float* out) { memcpy(out, w, sizeof(float) * n); }

void row_f16(const uint8_t* w, int n, float* out) {
    const uint16_t* h = (const uint16_t*)w;
    for (int i = 0; i < n; i++) out[i] = fp16_to_f32(h[i]);
}

void row_bf16(const uint8_t* w, int n, float* out) {
    const uint16_t* h = (const uint16_t*)w;
    for (int i = 0; i < n; i++) out[i] = bf16_to_f32(h[i]);
}

void row_q8_0(const uint8_t* w, int n, float* out) {
    const BlockQ8_0* b = (const BlockQ8_0*)w;
    for (int i = 0; i < n / 32; i++) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++) out[32 * i + j] = d * (float)b[i].qs[j];
    }
}

void row_q4_0(const uint8_t* w, int n, float* out) {
    const BlockQ4_0* b = (const BlockQ4_0*)w;
    for (int i = 0; i < n / 32; i++) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {  // low nibbles are weights 0-15, high ones 16-31
            out[32 * i + j] = d * (float)((b[i].qs[j] & 0xF) - 8);
            out[32 * i + j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

// Q4_K and Q5_K: sub-block j of 32 = (d * scale_j) * q - dmin * min_j
template <bool kFive>
void row_qk45(const uint8_t* w, int n, float* out) {
    const size_t bytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
    for (int i = 0; i < n / 256; i++) {
        const uint8_t* blk = w + i * bytes;
        uint16_t dh, mh;
        memcpy(&dh, blk, 2);
        memcpy(&mh, blk + 2, 2);
        const uint8_t *qh = blk + 16, *qs = kFive ? blk + 48 : blk + 16;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            k_scale_min(blk + 4, j, &sc, &m);
            const float dl = fp16_to_f32(dh) * sc, ml = fp16_to_f32(mh) * m;
            for (int l = 0; l < 32; l++) {
                int q = (qs[(j / 2) * 32 + l] >> (4 * (j & 1))) & 0xF;
                if (kFive) q |= ((qh[l] >> j) & 1) << 4;
                out[256 * i + 32 * j + l] = dl * (float)q - ml;
            }
        }
    }
}

// Q6_K: weight k = d * scale_{k/16} * (4 low bits | 2 high bits << 4 - 32), the bits' order as ggml's
void row_q6_k(const uint8_t* w, int n, float* out) {
    const BlockQ6_K* b = (const BlockQ6_K*)w;
    for (int i = 0; i < n / 256; i++) {
        const float d = fp16_to_f32(b[i].d);
        for (int k = 0; k < 256; k++) {
            const int h = k / 128, r = k % 128, s4 = r / 32, j = r % 32;
            const int lo = (b[i].ql[h * 64 + (s4 & 1) * 32 + j] >> (4 * (s4 >> 1))) & 0xF;
            const int hi = (b[i].qh[h * 32 + j] >> (2 * s4)) & 3;
            out[256 * i + k] = d * (float)b[i].scales[k / 16] * (float)((lo | (hi << 4)) - 32);
        }
    }
}

// the low-bit and older formats through their portable decoders (lowbit.h): scale * code - min
template <class P>
void row_decoded(const uint8_t* w, int n, float* out) {
    uint8_t codes[P::kUnit];
    float sc[P::kUnit / 16], mn[P::kUnit / 16];
    for (int u = 0; u < n / P::kUnit; u++) {
        P::decode(w + (size_t)u * P::kBytes, codes, sc, mn);
        for (int k = 0; k < P::kUnit; k++)
            out[u * P::kUnit + k] = sc[k / P::kBlock] * (float)codes[k] - mn[k / P::kBlock];
    }
}

RowFn row_fn(int fmt) {
    switch (fmt) {
        case F32: return row_f32;
        case F16: return row_f16;
        case BF16: return row_bf16;
        case Q8_0: return row_q8_0;
        case Q4_0: return row_q4_0;
        case Q4_K: return row_qk45<false>;
        case Q5_K: return row_qk45<true>;
        case Q6_K: return row_q6_k;
        case Q4_1: return row_decoded<PQ4_1>;
        case Q5_0: return row_decoded<PQ5_0>;
        case Q5_1: return row_decoded<PQ5_1>;
        case IQ4_NL: return row_decoded<PIQ4_NL>;
        case Q2_K: return row_decoded<PQ2_K>;
        case Q3_K: return row_decoded<PQ3_K>;
        case IQ4_XS: return row_decoded<PIQ4_XS>;
        case IQ2_XXS: return row_decoded<PIQ2_XXS>;
        case IQ2_XS: return row_decoded<PIQ2_XS>;
        case IQ2_S: return row_decoded<PIQ2_S>;
        case IQ3_XXS: return row_decoded<PIQ3_XXS>;
        case IQ3_S: return row_decoded<PIQ3_S>;
        case IQ1_M: return row_decoded<PIQ1_M>;
        default: return nullptr;  // IQ1_S, TQ1_0, TQ2_0: gguf-py decodes them (layers/linear.py)
    }
}

}  // namespace

extern "C" {

// Whether hymoe_dequant_rows decodes fmt.
__attribute__((visibility("default"))) int hymoe_has_dequant(int fmt) { return row_fn(fmt) != nullptr; }

// out[i] = row ids[i] of w (num_rows rows of n values in fmt, w_bytes long) as float32; out holds
// out_len floats. 0, or -1 a format without a decoder or a width its blocks do not divide, -2 an id
// outside the rows, -4 a buffer smaller than its sizes.
__attribute__((visibility("default"))) int hymoe_dequant_rows(int fmt, const uint8_t* w, int64_t w_bytes,
                                                              int64_t num_rows, int n, const int64_t* ids,
                                                              int num_ids, float* out, int64_t out_len) {
    const RowFn fn = row_fn(fmt);
    if (!fn || n < 1 || n % fmt_block_size(fmt)) return -1;
    const int64_t row_bytes = (int64_t)fmt_row_bytes(fmt, n);
    if (num_rows < 0 || num_ids < 0 || num_rows * row_bytes > w_bytes || (int64_t)num_ids * n > out_len) return -4;
    for (int i = 0; i < num_ids; i++)
        if (ids[i] < 0 || ids[i] >= num_rows) return -2;
    for (int i = 0; i < num_ids; i++) fn(w + ids[i] * row_bytes, n, out + (int64_t)i * n);
    return 0;
}

}  // extern "C"
