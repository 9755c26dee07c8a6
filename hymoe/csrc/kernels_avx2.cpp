// AVX2 + FMA + F16C kernels, compiled with those flags only and chosen at run time (x86-64 CPUs
// without AVX512, such as AMD Zen 2/3). Quantized formats: up to 4 rows against one token at a time;
// float formats one row.
// Formats not listed in fill_avx2 keep the portable kernels. No C++ library here (see common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "common.h"
#include "iq1s.h"
#include "k_scales.h"

namespace {

const int kPrefetch = 4096;

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// unsigned codes x signed activations -> 8 int32 lanes (pairs via maddubs, then pairs of pairs)
inline __m256i dot_u8s8(__m256i codes, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, a), _mm256_set1_epi16(1));
}
inline __m256i nibbles(const uint8_t* q16) {  // 16 bytes -> [low nibbles | high nibbles]
    __m128i v = _mm_loadu_si128((const __m128i*)q16);
    __m256i b = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

// ---- quantized rows, R at a time: each step's activations are loaded once for R rows, and the R
// accumulator chains run side by side (one row at a time waited on one FMA chain: Q4_0 streamed
// ~21 GB/s warm on Zen 4). K::dot<R>(w, row_bytes, ahead, act, n, out) writes out[0..R).
// Each row fetches the same column `ahead` bytes on: a whole number of passes of R rows, so the
// fetches land in later passes (rows are often shorter than the distance).
inline size_t pass_ahead(size_t row_bytes, int nr) {
    const size_t pass = row_bytes * (size_t)nr;
    return ((size_t)kPrefetch + pass - 1) / pass * pass;
}
inline void prefetch_block(const void* blk, int bytes, size_t ahead) {
    for (int l = 0; l < bytes; l += 64) _mm_prefetch((const char*)blk + ahead + l, _MM_HINT_T0);
}

struct KQ8_0 {
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < n / 32; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qs + 32 * i));
            for (int r = 0; r < R; r++) {
                const BlockQ8_0* b = (const BlockQ8_0*)(w + r * rb) + i;
                prefetch_block(b, 1, ahead);
                const __m256i q = _mm256_loadu_si256((const __m256i*)b->qs);
                // |q| * (x with q's sign): maddubs needs one unsigned operand
                const __m256i p = dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(b->d) * a.d[i]), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

struct KQ4_0 {  // codes 0..15, value d * (code - 8): minus 8 * sum(x) seeded into lane 0 of the integer dot
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < n / 32; i++) {
            const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qs + 32 * i));
            const __m256i off = _mm256_castsi128_si256(_mm_cvtsi32_si128(8 * (a.sum16[2 * i] + a.sum16[2 * i + 1])));
            for (int r = 0; r < R; r++) {
                const BlockQ4_0* b = (const BlockQ4_0*)(w + r * rb) + i;
                prefetch_block(b, 1, ahead);
                const __m256i p = _mm256_sub_epi32(dot_u8s8(nibbles(b->qs), x), off);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(b->d) * a.d[i]), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

// Q4_K / Q5_K: sub-block scales and mins unpacked in vector registers (k_scales.h) and applied in
// integer against per-256 activations; the mins' term goes into lanes 0-3 of the same accumulator.
template <bool kFive>
struct KQ45 {
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        const int bytes = kFive ? 176 : 144;
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < n / 256; i++) {
            alignas(16) int16_t sc[R][8];
            __m256i dot[R];
            for (int r = 0; r < R; r++) {
                const uint8_t* blk = w + r * rb + i * bytes;
                prefetch_block(blk, bytes, ahead);
                KQ45Scales s;
                s.load(blk);
                _mm_store_si128((__m128i*)sc[r], s.sc);
                // mins: sum_j m_j * bsum32_j, scaled by -dmin
                const __m128i m = _mm_madd_epi16(s.mn, _mm_loadu_si128((const __m128i*)(a.bk32 + 8 * i)));
                acc[r] = _mm256_fmadd_ps(_mm256_zextps128_ps256(_mm_cvtepi32_ps(m)), _mm256_set1_ps(-a.dk[i] * s.dmin), acc[r]);
                dot[r] = _mm256_setzero_si256();
            }
            for (int j = 0; j < 8; j++) {
                const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qk + 256 * i + 32 * j));
                for (int r = 0; r < R; r++) {
                    const uint8_t* blk = w + r * rb + i * bytes;
                    const uint8_t* qs = kFive ? blk + 48 : blk + 16;
                    __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 32 * (j / 2)));
                    if (j & 1) v = _mm256_srli_epi16(v, 4);
                    v = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
                    if (kFive) {
                        const __m256i h = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(blk + 16)), j),
                                                           _mm256_set1_epi8(1));
                        v = _mm256_or_si256(v, _mm256_slli_epi16(h, 4));
                    }
                    dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(_mm256_maddubs_epi16(v, x), _mm256_set1_epi16(sc[r][j])));
                }
            }
            for (int r = 0; r < R; r++) {
                const float d = h2f(*(const uint16_t*)(w + r * rb + i * bytes));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(a.dk[i] * d), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

struct KQ6_K {
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < n / 256; i++) {
            __m256i dot[R];
            for (int r = 0; r < R; r++) {
                const BlockQ6_K* b = (const BlockQ6_K*)(w + r * rb) + i;
                prefetch_block(b, sizeof(BlockQ6_K), ahead);
                // codes are q + 32: minus 32 * sum_g scale_g * bsum16_g, in the same integer lanes
                const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b->scales));
                dot[r] = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)(a.bk16 + 16 * i))), 5);
                dot[r] = _mm256_sub_epi32(_mm256_setzero_si256(), dot[r]);
            }
            for (int c = 0; c < 8; c++) {  // 32 weights: half h, nibble half (c%4)/2, 2-bit field c%4
                const int h = c / 4, s4 = c % 4, g = 2 * c;  // groups of 16: g and g + 1
                const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qk + 256 * i + 32 * c));
                for (int r = 0; r < R; r++) {
                    const BlockQ6_K* b = (const BlockQ6_K*)(w + r * rb) + i;
                    __m256i lo = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h + 32 * (s4 & 1)));
                    lo = _mm256_and_si256(_mm256_srli_epi16(lo, 4 * (s4 >> 1)), _mm256_set1_epi8(0x0F));
                    const __m256i hi = _mm256_and_si256(
                        _mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(b->qh + 32 * h)), 2 * s4), _mm256_set1_epi8(3));
                    const __m256i p = _mm256_maddubs_epi16(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), x);
                    const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(b->scales[g + 1]), _mm_set1_epi16(b->scales[g]));
                    dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(p, sc));
                }
            }
            for (int r = 0; r < R; r++) {
                const BlockQ6_K* b = (const BlockQ6_K*)(w + r * rb) + i;
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(a.dk[i] * h2f(b->d)), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

// TQ2_0 (1.58-bit): 2-bit codes 0..2 against per-256 activations; eight vpmaddubsw results add up in
// int16 (8 x 2 x 2 x 127 < 32768) before one vpmaddwd, and the code offset (+1) is minus the sum of
// x, seeded into lane 0 of the integer dot.
struct KTQ2_0 {
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int i = 0; i < n / 256; i++) {
            __m128i s = _mm_madd_epi16(_mm_loadu_si128((const __m128i*)(a.bk32 + 8 * i)), _mm_set1_epi16(1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
            const __m256i seed = _mm256_castsi128_si256(_mm_cvtsi32_si128(-_mm_cvtsi128_si32(s)));
            __m256i p16[R];
            for (int r = 0; r < R; r++) {
                prefetch_block((const BlockTQ2_0*)(w + r * rb) + i, sizeof(BlockTQ2_0), ahead);
                p16[r] = _mm256_setzero_si256();
            }
            for (int h = 0; h < 2; h++)  // weight 128h + 32l + m: 2-bit field l of byte 32h + m
                for (int l = 0; l < 4; l++) {
                    const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qk + 256 * i + 128 * h + 32 * l));
                    for (int r = 0; r < R; r++) {
                        const __m256i q = _mm256_loadu_si256((const __m256i*)(((const BlockTQ2_0*)(w + r * rb) + i)->qs + 32 * h));
                        const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), _mm256_set1_epi8(3));
                        p16[r] = _mm256_add_epi16(p16[r], _mm256_maddubs_epi16(codes, x));
                    }
                }
            for (int r = 0; r < R; r++) {
                const __m256i d32 = _mm256_add_epi32(_mm256_madd_epi16(p16[r], _mm256_set1_epi16(1)), seed);
                const float d = h2f(((const BlockTQ2_0*)(w + r * rb) + i)->d);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d32), _mm256_set1_ps(a.dk[i] * d), acc[r]);
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

// IQ1_S: per 32 weights four codebook lookups of 8 (codes 0..2, see iq1s.h), scale dl, and the
// offset dl * (1 - delta) against the activations' sum; the 8 scales and offsets of a super-block
// in vectors (scalar int-to-float conversions carry a false dependency each)
struct KIQ1_S {
    template <int R>
    static void dot(const uint8_t* w, size_t rb, size_t ahead, const void* act, int n, float* out) {
        ActView a = act_view(act, n);
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        alignas(32) uint16_t idx[R][32];
        alignas(32) float dl[R][8];
        for (int i = 0; i < n / 256; i++) {
            const __m256 da = _mm256_loadu_ps(a.d + 8 * i);
            const __m256 sums = _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(  // per block of 32: its two sums of 16
                _mm256_hadd_epi32(_mm256_loadu_si256((const __m256i*)(a.sum16 + 16 * i)),
                                  _mm256_loadu_si256((const __m256i*)(a.sum16 + 16 * i + 8))), 0xD8));
            for (int r = 0; r < R; r++) {
                const BlockIQ1_S* b = (const BlockIQ1_S*)(w + r * rb) + i;
                prefetch_block(b, 1, ahead);
                iq1s_indices(b, idx[r]);
                const __m256i h32 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)b->qh));
                const __m256i odd = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(h32, 11), _mm256_set1_epi32(14)),
                                                    _mm256_set1_epi32(1));
                const __m256 s = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(odd), _mm256_set1_ps(h2f(b->d))), da);
                const __m256 delta = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h32, 15)), _mm256_set1_ps(0.25f),
                                                     _mm256_set1_ps(0.875f));
                acc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(s, delta), sums, acc[r]);  // minus the offsets
                _mm256_store_ps(dl[r], s);
            }
            for (int j = 0; j < 8; j++) {
                const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qs + 256 * i + 32 * j));
                for (int r = 0; r < R; r++) {
                    const __m256i p = dot_u8s8(iq1s_codes32(idx[r] + 4 * j), x);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(dl[r] + j), acc[r]);
                }
            }
        }
        for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
    }
};

// kRows rows per pass, the last ones of a range one at a time
template <class K, int kRows>
void rows_q(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
            size_t out_stride) {
    const size_t ahead = pass_ahead(row_bytes, kRows);
    for (size_t l = 0; l < ahead && l < (size_t)nrows * row_bytes; l += 64) _mm_prefetch((const char*)w + l, _MM_HINT_T0);
    for (int r = 0; r < nrows; r += kRows) {
        const uint8_t* rows = w + (size_t)r * row_bytes;
        for (int t = 0; t < ntok; t++) {
            float* o = out + t * out_stride + r;
            if (r + kRows <= nrows) K::template dot<kRows>(rows, row_bytes, ahead, acts[t], n, o);
            else
                for (int j = 0; r + j < nrows; j++) K::template dot<1>(rows + j * row_bytes, row_bytes, ahead, acts[t], n, o + j);
        }
    }
}

template <int FMT>
float dot_float(const uint8_t* w, const void* act, int n) {
    const float* x = (const float*)act;
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v;
        if (FMT == F32) {
            v = _mm256_loadu_ps((const float*)w + i);
        } else {
            __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)w + i));
            v = FMT == F16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
        acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + i), acc);
    }
    float s = hsum(acc);
    for (; i < n; i++) {
        uint16_t h = ((const uint16_t*)w)[i];
        float v = FMT == F32 ? ((const float*)w)[i] : FMT == F16 ? h2f(h) : bf16_to_f32(h);
        s += v * x[i];
    }
    return s;
}

template <float (*Dot)(const uint8_t*, const void*, int)>
void rows(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
          size_t out_stride) {
    for (int r = 0; r < nrows; r++)
        for (int t = 0; t < ntok; t++) out[t * out_stride + r] = Dot(w + r * row_bytes, acts[t], n);
}

}  // namespace

void fill_avx2(KernelTable* t) {
    t->name = "avx2";
    t->rows[F32] = rows<dot_float<F32>>;
    t->rows[F16] = rows<dot_float<F16>>;
    t->rows[BF16] = rows<dot_float<BF16>>;
    // 4 rows per pass (single core, warm, Zen 4 --isa avx2, GB/s from 1 row to 4: Q4_K 13.5 -> 14.5,
    // Q4_0 10.6 -> 12.1, Q8_0 22.6 -> 24.9, IQ1_S 2.7 -> 3.3); Q6_K one row (2-4 rows: 14.9 -> 13.3)
    t->rows[Q8_0] = rows_q<KQ8_0, 4>;
    t->rows[Q4_0] = rows_q<KQ4_0, 4>;
    t->rows[Q4_K] = rows_q<KQ45<false>, 4>;
    t->rows[Q5_K] = rows_q<KQ45<true>, 4>;
    t->rows[Q6_K] = rows_q<KQ6_K, 1>;
    t->rows[TQ2_0] = rows_q<KTQ2_0, 4>;
    t->rows[IQ1_S] = rows_q<KIQ1_S, 4>;
    fill_avx2_tiled(t);
}
#else
#include "common.h"
void fill_avx2(KernelTable*) {}
#endif
