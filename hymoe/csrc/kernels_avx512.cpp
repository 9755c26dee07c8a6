// AVX512 F/BW/VL + VNNI kernels, compiled with those flags only and chosen at run time.
//
// Every quantised format is turned, 64 weights at a time, into unsigned byte codes `wq` and a
// per-lane float scale `ws`, so one inner loop serves them all:
//   int32 lanes  p = dpbusd(-c * sum4(a), wq, a)      (c: the code offset, e.g. 8 for Q4_0)
//   float acc   += cvt(p) * ws * d_a
// Weights are unpacked once per row and reused for up to kTile tokens (batches, prefill).
// Lanes 0-7 cover the first 32 weights of a chunk and lanes 8-15 the next 32, which is also how
// the activation scales are laid out. This file must not use the C++ library (see common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include <math.h>

#include "iq1s.h"
#include "kernels.h"
#include "rows_avx512.h"

namespace {

// the activation layout: rows_avx512.h
size_t act_bytes_avx512(int n) { return paired_at(n) + (n % 256 ? 0 : 2 * (size_t)n); }

// The per-256 quantisation of the K-quants (same rounding as quantize_k_portable).
void quantize_k256(const float* x, int n, void* out) {
    if (n % 256) return;
    ActView v = act_view(out, n);
    const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int b = 0; b < n / 256; b++) {
        const float* xb = x + 256 * b;
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < 256; i += 16) m = _mm512_max_ps(m, _mm512_and_ps(_mm512_loadu_ps(xb + i), sign_off));
        float amax = _mm512_reduce_max_ps(m), inv = amax > 0 ? 127.f / amax : 0.f;
        ((float*)v.dk)[b] = amax / 127.f;
        for (int g = 0; g < 16; g++) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * g), _mm512_set1_ps(inv)));
            _mm_storeu_si128((__m128i*)(v.qk + 256 * b + 16 * g), _mm512_cvtepi32_epi8(q));
            ((int16_t*)v.bk16)[16 * b + g] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        for (int g = 0; g < 8; g++)
            ((int16_t*)v.bk32)[8 * b + g] = (int16_t)(v.bk16[16 * b + 2 * g] + v.bk16[16 * b + 2 * g + 1]);
        // the same values with sub-blocks in Q4_K/Q5_K chunk order (0 2 1 3 4 6 5 7): their chunk c
        // pairs sub-blocks 4(c/2) + c%2 and that + 2, so each chunk's activations are one load
        int8_t* paired = (int8_t*)out + paired_at(n) + 256 * b;
        const int8_t* qk = (const int8_t*)v.qk + 256 * b;
        static const int kOrder[8] = {0, 2, 1, 3, 4, 6, 5, 7};
        for (int j = 0; j < 8; j++)
            _mm256_storeu_si256((__m256i*)(paired + 32 * j), _mm256_loadu_si256((const __m256i*)(qk + 32 * kOrder[j])));
        // and in the grouped Q4_K kernel's lane order (kq45_groups.h): [X lo, Y lo, X hi, Y hi] of 64
        // bytes, 128-bit lane j of X lo holding sub-block 2j's values 0-15, of Y lo its values 16-31,
        // of X hi and Y hi the same of sub-block 2j + 1
        int8_t* lanes = (int8_t*)out + lanes_at(n) + 256 * b;
        for (int j = 0; j < 4; j++)
            for (int h = 0; h < 4; h++)  // h: X lo, Y lo, X hi, Y hi
                _mm_storeu_si128((__m128i*)(lanes + 64 * h + 16 * j),
                                 _mm_loadu_si128((const __m128i*)(qk + 32 * (2 * j + h / 2) + 16 * (h % 2))));
    }
}

void quantize_avx512(const float* x, int n, void* out) {
    if (n % 64) return quantize_portable(x, n, out);
    uint8_t* b = (uint8_t*)out;
    int8_t* qs = (int8_t*)b;
    float* d = (float*)(b + n);
    int32_t* s16 = (int32_t*)(b + n + (n / 32) * 4);
    uint8_t* e = b + extras_at(n);
    float* dexp = (float*)e;
    int32_t* ns4 = (int32_t*)(e + n);
    float* dsum = (float*)(e + 2 * (size_t)n);
    const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int blk = 0; blk < n / 32; blk++) {
        __m512 v0 = _mm512_loadu_ps(x + 32 * blk), v1 = _mm512_loadu_ps(x + 32 * blk + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, sign_off), _mm512_and_ps(v1, sign_off)));
        float scale = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
        // same rounding as lrintf in the portable path (round half to even), so all paths agree
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
        _mm_storeu_si128((__m128i*)(qs + 32 * blk), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i*)(qs + 32 * blk + 16), _mm512_cvtepi32_epi8(q1));
        d[blk] = scale;
        int32_t sum0 = _mm512_reduce_add_epi32(q0), sum1 = _mm512_reduce_add_epi32(q1);
        s16[2 * blk] = sum0;
        s16[2 * blk + 1] = sum1;
        dsum[blk] = scale * (float)(sum0 + sum1);
        // minus the sum of each 4 values: lane l of a 16-lane group sums q[4l..4l+3]
        const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        for (int h = 0; h < 2; h++) {
            __m512i q = _mm512_permutexvar_epi32(idx, h ? q1 : q0);  // [q0 q4 q8 q12 | q1 q5 .. | ..]
            __m128i s4 = _mm_add_epi32(_mm_add_epi32(_mm512_castsi512_si128(q), _mm512_extracti32x4_epi32(q, 1)),
                                       _mm_add_epi32(_mm512_extracti32x4_epi32(q, 2), _mm512_extracti32x4_epi32(q, 3)));
            _mm_storeu_si128((__m128i*)(ns4 + 8 * blk + 4 * h), _mm_sub_epi32(_mm_setzero_si128(), s4));
        }
        _mm256_storeu_ps(dexp + 8 * blk, _mm256_set1_ps(scale));
    }
    quantize_k256(x, n, out);
}

// Four interleaved streams per thread, like the kernels' row streams: DRAM serves several
// concurrent streams faster than one, and the probe must not understate what the kernels can get.
uint64_t read_avx512(const uint8_t* p, int64_t bytes) {
    const int64_t q = bytes / 8 / 64 * 64;
    __m512i a[8];
    for (int k = 0; k < 8; k++) a[k] = _mm512_setzero_si512();
    for (int64_t i = 0; i < q; i += 64)
        for (int k = 0; k < 8; k++) a[k] = _mm512_xor_si512(a[k], _mm512_loadu_si512((const void*)(p + k * q + i)));
    for (int k = 1; k < 8; k++) a[0] = _mm512_xor_si512(a[0], a[k]);
    return (uint64_t)_mm512_reduce_add_epi64(a[0]);
}

void silu_mul_avx512(float* g, const float* u, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(g + i);
        __m512 s = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

// ---- formats: a super unit of kSU weights, split in chunks of 64 ------------------------------
// kShift: code offset c = 1 << kShift (-1: codes are the values). kMins: a per-32 term * dsum.
struct FQ8_0 {
    static const int kDecodeRows = 1;  // one row a pass for one token streams best (decode_rows_of)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 64, kBytes = 68, kShift = 7;
    static const bool kMins = false;
    static const bool kPrepAhead = false;
    const BlockQ8_0* b;
    __m512 ws;
    void prep(const uint8_t* p) {
        b = (const BlockQ8_0*)p;
        ws = two_scales_f16(b[0].d, b[1].d);
    }
    __m512i chunk(int, __m512& s) const {
        s = ws;
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)b[0].qs)),
                                       _mm256_loadu_si256((const __m256i*)b[1].qs), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));  // signed -> unsigned: code = q + 128
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

struct FQ4_0 {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 64, kBytes = 36, kShift = 3;
    static const bool kMins = false;
    static const bool kPrepAhead = false;
    const BlockQ4_0* b;
    __m512 ws;
    void prep(const uint8_t* p) {
        b = (const BlockQ4_0*)p;
        ws = two_scales_f16(b[0].d, b[1].d);
    }
    __m512i chunk(int, __m512& s) const {
        s = ws;
        const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);  // 128-bit lanes [lo0 hi0 lo1 hi1]
        __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b[0].qs))),
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b[1].qs)), 1);
        return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

struct FIQ1_S {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = 50, kShift = 0;
    static const bool kMins = true, kPrepAhead = true;
    __m512 dl;  // lanes 0-7: scale of each sub-block of 32
    __m256 m;   // minus scale * delta: value = dl * (grid + delta)
    alignas(32) uint16_t idx[32];  // the 32 codebook indices (iq1s.h)
    void prep(const uint8_t* p) {
        const BlockIQ1_S* b = (const BlockIQ1_S*)p;
        iq1s_indices(b, idx);
        __m256 scale, omd;
        iq1s_scales8(b, &scale, &omd);
        dl = _mm512_castps256_ps512(scale);
        m = _mm256_mul_ps(scale, _mm256_sub_ps(omd, _mm256_set1_ps(1.f)));  // -delta = (1 - delta) - 1
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(dl, 2 * c, 2 * c + 1);
        return _mm512_inserti64x4(_mm512_castsi256_si512(iq1s_codes32(idx + 8 * c)), iq1s_codes32(idx + 8 * c + 4), 1);
    }
    __m256 mins() const { return m; }
};


// ---- float weights: bandwidth-light formats, plain FMA against float activations ---------------
template <int FMT>
inline __m512 load16(const uint8_t* row, int i) {
    if (FMT == F32) return _mm512_loadu_ps((const float*)row + i);
    __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)row + i));
    if (FMT == F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // BF16
}

template <int FMT, int NT>
void rows_float_tile(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
                     size_t out_stride) {
    const Ahead fetch(w, nrows * row_bytes, g_tuning.prefetch_bytes);
    for (int r = 0; r < nrows; r++) {
        const uint8_t* row = w + r * row_bytes;
        __m512 acc[NT];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
            if ((i * (FMT == F32 ? 4 : 2)) % 64 == 0) fetch(row + i * (FMT == F32 ? 4 : 2), 64);
            __m512 wv = load16<FMT>(row, i);
            for (int t = 0; t < NT; t++) acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps((const float*)acts[t] + i), acc[t]);
        }
        for (int t = 0; t < NT; t++) out[t * out_stride + r] = hsum(acc[t]);
    }
}

template <int FMT>
int rows_float(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
               float* out, size_t out_stride) {
    if (n % 16) return 0;
    TokenGroups groups(w);
    int t = 0;
    for (; t + kTile <= ntok; t += kTile) {
        groups.next_group(t + kTile == ntok);
        rows_float_tile<FMT, kTile>(w, row_bytes, nrows, acts + t, n, out + t * out_stride, out_stride);
    }
    for (; t < ntok; t++) {
        groups.next_group(t + 1 == ntok);
        rows_float_tile<FMT, 1>(w, row_bytes, nrows, acts + t, n, out + t * out_stride, out_stride);
    }
    return nrows;
}

// Q4_0 rows of 256s go 256 weights a unit (their 8 scales converted at once, kernels_avx512_legacy.cpp);
// other rows 64 at a time
int rows_q4_0_any(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
                  size_t out_stride) {
    if (n % 256 == 0) return avx512::rows_q4_0_units(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
    return rows_q<FQ4_0>(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
}

}  // namespace

const RowsFn avx512::rows_f32 = rows_float<F32>;
const RowsFn avx512::rows_f16 = rows_float<F16>;
const RowsFn avx512::rows_bf16 = rows_float<BF16>;
const RowsFn avx512::rows_q8_0 = rows_q<FQ8_0>;
const RowsFn avx512::rows_q4_0 = rows_q4_0_any;
const RowsFn avx512::rows_iq1_s = rows_q<FIQ1_S>;
const QuantizeFn avx512::quantize = quantize_avx512;
const ActBytesFn avx512::act_bytes = act_bytes_avx512;
const SiluMulFn avx512::silu_mul = silu_mul_avx512;
const ReadFn avx512::read = read_avx512;
#endif
