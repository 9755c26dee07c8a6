// AVX2 + FMA + F16C kernels, compiled with those flags only and chosen at run time (x86-64 CPUs
// without AVX512, such as AMD Zen 2/3). 32 weights per step; one row against one token at a time.
// No C++ library here (see common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "iq1s.h"
#include "k_scales.h"
#include "kernels.h"
#include "simd_avx2.h"

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

float dot_q8_0(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockQ8_0* b = (const BlockQ8_0*)w;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / 32; i++) {
        _mm_prefetch((const char*)(b + i) + kPrefetch, _MM_HINT_T0);
        __m256i q = _mm256_loadu_si256((const __m256i*)b[i].qs);
        __m256i x = _mm256_loadu_si256((const __m256i*)(a.qs + 32 * i));
        // |q| * (x with q's sign): maddubs needs one unsigned operand
        __m256i p = dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(h2f(b[i].d) * a.d[i]), acc);
    }
    return hsum(acc);
}

float dot_q4_0(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockQ4_0* b = (const BlockQ4_0*)w;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0;
    for (int i = 0; i < n / 32; i++) {
        _mm_prefetch((const char*)(b + i) + kPrefetch, _MM_HINT_T0);
        __m256i p = dot_u8s8(nibbles(b[i].qs), _mm256_loadu_si256((const __m256i*)(a.qs + 32 * i)));
        float s = h2f(b[i].d) * a.d[i];
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc);
        offset += s * (float)(a.sum16[2 * i] + a.sum16[2 * i + 1]);
    }
    return hsum(acc) - 8.f * offset;
}

// One Q4_K/Q5_K block's integer dot with its activations x: 8 sub-blocks of 32 codes, each pair
// sum scaled by its int16 scale sc[j] (broadcast from memory)
template <bool kFive>
inline __m256i qk45_block(const uint8_t* blk, const int8_t* x, const int16_t* sc) {
    const uint8_t* qh = kFive ? blk + 16 : nullptr;
    const uint8_t* qs = kFive ? blk + 48 : blk + 16;
    __m256i dot = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(qs + 32 * (j / 2)));
        if (j & 1) v = _mm256_srli_epi16(v, 4);
        v = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
        if (kFive) {
            __m256i h = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)qh), j),
                                         _mm256_set1_epi8(1));
            v = _mm256_or_si256(v, _mm256_slli_epi16(h, 4));
        }
        const __m256i p = _mm256_maddubs_epi16(v, _mm256_loadu_si256((const __m256i*)(x + 32 * j)));
        dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, _mm256_set1_epi16(sc[j])));
    }
    return dot;
}

// Sub-block scales and mins unpacked in vector registers (k_scales.h) and the float sums kept in a
// vector until the row ends: scalar unpacking and a reduction per 256 weights would make this
// kernel compute-bound (at ~45% of bandwidth).
template <bool kFive>
float dot_qk45(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const int bytes = kFive ? 176 : 144;
    __m256 acc = _mm256_setzero_ps();
    __m128 macc = _mm_setzero_ps();
    for (int i = 0; i < n / 256; i++) {
        const uint8_t* blk = w + i * bytes;
        for (int l = 0; l < bytes; l += 64) _mm_prefetch((const char*)blk + kPrefetch + l, _MM_HINT_T0);
        KQ45Scales s;
        s.load(blk);
        alignas(16) int16_t sc[8];
        _mm_store_si128((__m128i*)sc, s.sc);
        const __m256i dot = qk45_block<kFive>(blk, a.qk + 256 * i, sc);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(a.dk[i] * s.d), acc);
        // mins: sum_j m_j * bsum32_j, scaled by dmin
        const __m128i m = _mm_madd_epi16(s.mn, _mm_loadu_si128((const __m128i*)(a.bk32 + 8 * i)));
        macc = _mm_fmadd_ps(_mm_cvtepi32_ps(m), _mm_set1_ps(a.dk[i] * s.dmin), macc);
    }
    __m128 m4 = _mm_add_ps(macc, _mm_movehl_ps(macc, macc));
    m4 = _mm_add_ss(m4, _mm_movehdup_ps(m4));
    return hsum(acc) - _mm_cvtss_f32(m4);
}

// Q4_K and Q5_K against one token, the rows' blocks in address order 2 at a time (as kq45_groups.h
// takes 4 on AVX512): lane k of one register holds block k's header, so one scale decode, one fp16
// conversion and one mins' correction serve 2 blocks. A pair may span rows (a row of 768 weights is
// 3 blocks): the activations' per-unit values are copied once per call with unit j % U at j, j <= U
// (repeated_units, common.h).
thread_local ScratchBuffer t_pairs;  // per thread: repeated_units' values (common.h)

// Lane k: block k's 8 scales then 8 mins as bytes, from its first 16 bytes [d|dmin, A, B, C] (the
// layout KQ45Scales::load unpacks one block at a time)
inline __m256i pair_scales(__m256i h) {
    const __m256i v = _mm256_shuffle_epi32(h, 0x39);  // [A, B, C, d|dmin]
    const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi8(63));
    const __m256i c = _mm256_srlv_epi32(_mm256_shuffle_epi32(v, 0xAA), _mm256_setr_epi32(0, 4, 0, 0, 0, 4, 0, 0));
    const __m256i hi = _mm256_or_si256(_mm256_and_si256(c, _mm256_set1_epi8(15)),
                                       _mm256_and_si256(_mm256_srli_epi32(v, 2), _mm256_set1_epi8(0x30)));
    return _mm256_unpacklo_epi32(lo, hi);
}

template <bool kFive>
int qk45_pairs(const uint8_t* w, int nrows, const void* act, int n, float* out) {
    const int B = kFive ? 176 : 144, U = n / 256;
    const ActView a = act_view(act, n);
    float* dk;
    const int16_t* bk = repeated_units(t_pairs, a, U, 1, &dk);
    if (!bk) return 0;  // the per-row kernel then takes the rows
    const size_t total = (size_t)nrows * U;
    __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
    int u = 0, r = 0;
    for (size_t b0 = 0; b0 < total; b0 += 2) {
        const int nb = total - b0 < 2 ? 1 : 2;
        const uint8_t* p = w + b0 * B;
        for (int l = 0; l < nb * B; l += 64) _mm_prefetch((const char*)p + kPrefetch + l, _MM_HINT_T0);
        __m256i h = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)p));
        if (nb > 1) h = _mm256_inserti128_si256(h, _mm_loadu_si128((const __m128i*)(p + B)), 1);
        const __m256i sb = pair_scales(h);
        alignas(32) int16_t sc[2][8];  // block k's 8 scales, int16
        alignas(16) float sd[4];       // d_k d_a at 2k, dmin_k d_a at 2k + 1
        const __m128i sb0 = _mm256_castsi256_si128(sb), sb1 = _mm256_extracti128_si256(sb, 1);
        _mm256_store_si256((__m256i*)sc, _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(sb0, sb1)));
        const __m128i dd = _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        const __m128 sd4 = _mm_mul_ps(_mm_cvtph_ps(dd), _mm_setr_ps(dk[u], dk[u], dk[u + 1], dk[u + 1]));
        _mm_store_ps(sd, sd4);
        // the mins' correction: lanes 4k..4k+3 block k's 8 mins x its 8 sums of 32, x dmin_k d_a
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi64(sb0, sb1));
        const __m256 msc = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sd4),
                                                    _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3));
        const __m256 mins = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i*)(bk + 8 * u)))), msc);
        // sc and sd may have changed (they have not): the chunks broadcast from memory, loads, where the
        // compiler would otherwise pick the values out of registers with shuffles
        __asm__ volatile("" : "+m"(sc), "+m"(sd));
        for (int k = 0; k < nb; k++) {
            const __m256i dot = qk45_block<kFive>(p + k * B, a.qk + 256 * u, sc[k]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(sd[2 * k]), acc);
            macc = _mm256_add_ps(macc, k == 0 ? _mm256_blend_ps(_mm256_setzero_ps(), mins, 0x0F)
                                              : _mm256_blend_ps(_mm256_setzero_ps(), mins, 0xF0));
            if (++u == U) {
                out[r++] = hsum(_mm256_sub_ps(acc, macc));
                acc = macc = _mm256_setzero_ps();
                u = 0;
            }
        }
    }
    return nrows;
}

// Q4_K, Q5_K: at one token over rows back to back, blocks in pairs; otherwise a row at a time
template <bool kFive>
int rows_qk45(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
              size_t out_stride) {
    if (ntok == 1 && g_tuning.kq45_groups && row_bytes == (size_t)(n / 256) * (kFive ? 176 : 144) &&
        qk45_pairs<kFive>(w, nrows, acts[0], n, out))
        return nrows;
    return rows_by_dot<dot_qk45<kFive>>(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
}

float dot_q6_k(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockQ6_K* b = (const BlockQ6_K*)w;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; i++) {
        for (int l = 0; l < 256; l += 64) _mm_prefetch((const char*)(b + i) + kPrefetch + l, _MM_HINT_T0);
        // the 16 scales as int16: pairs for each 32 weights, and against the sums per 16 for the offset
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b[i].scales));
        __m256i dot = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {  // 32 weights: half h, nibble half (c%4)/2, 2-bit field c%4
            int h = c / 4, s4 = c % 4;
            __m256i lo = _mm256_loadu_si256((const __m256i*)(b[i].ql + 64 * h + 32 * (s4 & 1)));
            lo = _mm256_and_si256(_mm256_srli_epi16(lo, 4 * (s4 >> 1)), _mm256_set1_epi8(0x0F));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i*)(b[i].qh + 32 * h)), 2 * s4),
                                          _mm256_set1_epi8(3));
            __m256i codes = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
            __m256i p = _mm256_maddubs_epi16(codes, _mm256_loadu_si256((const __m256i*)(a.qk + 256 * i + 32 * c)));
            int g = 2 * c;  // groups of 16: g and g + 1
            __m256i sc = _mm256_set_m128i(_mm_set1_epi16(b[i].scales[g + 1]), _mm_set1_epi16(b[i].scales[g]));
            dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, sc));
        }
        // codes are q + 32: minus 32 * sum_g scale_g * bsum16_g, in the same integer lanes
        const __m256i offset = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i*)(a.bk16 + 16 * i)));
        dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(offset, 5));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(a.dk[i] * h2f(b[i].d)), acc);
    }
    return hsum(acc);
}

// The end of a ternary super-block (TQ2_0, TQ1_0): p16, the int16 sums of codes (value + 1) times
// activations, scaled by s into acc; the +1 as s times the activations' sum, into offset
inline void ternary_sums(__m256i p16, float s, const int16_t* bk32, __m256& acc, float& offset) {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1))), _mm256_set1_ps(s), acc);
    int32_t sum = 0;
    for (int j = 0; j < 8; j++) sum += bk32[j];
    offset += s * (float)sum;
}

// TQ2_0 (1.58-bit): 2-bit codes 0..2 against per-256 activations; eight vpmaddubsw results add up in
// int16 (8 x 2 x 2 x 127 < 32768) before one vpmaddwd, and the code offset (+1) is minus the sum of a.
float dot_tq2_0(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockTQ2_0* b = (const BlockTQ2_0*)w;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0;
    for (int i = 0; i < n / 256; i++) {
        _mm_prefetch((const char*)(b + i) + kPrefetch, _MM_HINT_T0);
        _mm_prefetch((const char*)(b + i) + kPrefetch + 64, _MM_HINT_T0);
        __m256i p16 = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {  // weight 128h + 32l + m: 2-bit field l of byte 32h + m
            const __m256i q = _mm256_loadu_si256((const __m256i*)(b[i].qs + 32 * h));
            for (int l = 0; l < 4; l++) {
                const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), _mm256_set1_epi8(3));
                const __m256i x = _mm256_loadu_si256((const __m256i*)(a.qk + 256 * i + 128 * h + 32 * l));
                p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(codes, x));
            }
        }
        ternary_sums(p16, a.dk[i] * h2f(b[i].d), a.bk32 + 8 * i, acc, offset);
    }
    return hsum(acc) - offset;
}

// TQ1_0 (1.69 bits): the digits of qs[0..31] are weights 32k + l (k < 5), those of qs[32..47]
// weights 160 + 16k + l and those of qh[0..3] weights 240 + 4k + l (k < 4; see tiles.h). One vector
// holds qs[32..47] and qh side by side, so its k-th digits meet one activation vector built of the
// two matching runs (zeros past them). Sums as TQ2_0's. (The portable kernel reads 1 GB/s per
// core, this one about 4.)
float dot_tq1_0(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockTQ1_0* b = (const BlockTQ1_0*)w;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0;
    for (int i = 0; i < n / 256; i++) {
        _mm_prefetch((const char*)(b + i) + kPrefetch, _MM_HINT_T0);
        const int8_t* x = a.qk + 256 * i;
        __m256i pv[5], pu[5];
        tq1_block_powers(b[i].qs, b[i].qh, pv, pu);
        __m256i p16 = _mm256_setzero_si256();  // 10 x 2 x 2 x 127 < 32768
        for (int k = 0; k < 5; k++) {
            int32_t x4 = 0;
            if (k < 4) memcpy(&x4, x + 240 + 4 * k, 4);
            const __m256i xu = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(x + 160 + 16 * k))), _mm_cvtsi32_si128(x4), 1);
            p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(tq1_digit(pv[k]), _mm256_loadu_si256((const __m256i*)(x + 32 * k))));
            p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(tq1_digit(pu[k]), xu));
        }
        ternary_sums(p16, a.dk[i] * h2f(b[i].d), a.bk32 + 8 * i, acc, offset);
    }
    return hsum(acc) - offset;
}

// IQ1_S: per 32 weights four codebook lookups of 8 (codes 0..2, see iq1s.h), scale dl, and the
// offset dl * (1 - delta) against the activations' sum; the 8 scales and offsets of a super-block
// in vectors (scalar int-to-float conversions carry a false dependency each)
float dot_iq1_s(const uint8_t* w, const void* act, int n) {
    ActView a = act_view(act, n);
    const BlockIQ1_S* b = (const BlockIQ1_S*)w;
    __m256 acc = _mm256_setzero_ps(), offset = _mm256_setzero_ps();
    alignas(32) uint16_t idx[32];
    alignas(32) float dl[8];
    for (int i = 0; i < n / 256; i++) {
        _mm_prefetch((const char*)(b + i) + kPrefetch, _MM_HINT_T0);
        iq1s_indices(b + i, idx);
        __m256 dl8, omd;
        iq1s_scales8(b + i, &dl8, &omd);
        const __m256 s = _mm256_mul_ps(dl8, _mm256_loadu_ps(a.d + 8 * i));  // dl * the activations' scale
        const __m256i sums = _mm256_permute4x64_epi64(  // per block of 32: its two sums of 16
            _mm256_hadd_epi32(_mm256_loadu_si256((const __m256i*)(a.sum16 + 16 * i)),
                              _mm256_loadu_si256((const __m256i*)(a.sum16 + 16 * i + 8))), 0xD8);
        offset = _mm256_fmadd_ps(_mm256_mul_ps(s, omd), _mm256_cvtepi32_ps(sums), offset);
        _mm256_store_ps(dl, s);
        for (int j = 0; j < 8; j++) {
            const __m256i p = dot_u8s8(iq1s_codes32(idx + 4 * j), _mm256_loadu_si256((const __m256i*)(a.qs + 256 * i + 32 * j)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(dl + j), acc);
        }
    }
    return hsum(_mm256_sub_ps(acc, offset));
}

template <int FMT>
inline __m256 load8_float(const uint8_t* w, int i) {  // weights i..i+7 as f32
    if (FMT == F32) return _mm256_loadu_ps((const float*)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)w + i));
    return FMT == F16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// four sums, not one chain of FMAs (4 cycles each), and a prefetch per line: with one chain the
// FMAs' latency, not the bandwidth, bounds long BF16 rows (deepseek-v3 batch 1: 0.63 of bandwidth
// against 0.69)
template <int FMT>
float dot_float(const uint8_t* w, const void* act, int n) {
    const float* x = (const float*)act;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const int bytes = FMT == F32 ? 4 : 2;  // per weight
        for (int l = 0; l < 32 * bytes; l += 64) _mm_prefetch((const char*)w + (size_t)i * bytes + l + kPrefetch, _MM_HINT_T0);
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_fmadd_ps(load8_float<FMT>(w, i + 8 * j), _mm256_loadu_ps(x + i + 8 * j), acc[j]);
    }
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load8_float<FMT>(w, i), _mm256_loadu_ps(x + i), acc[0]);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) {
        uint16_t h = ((const uint16_t*)w)[i];
        float v = FMT == F32 ? ((const float*)w)[i] : FMT == F16 ? h2f(h) : bf16_to_f32(h);
        s += v * x[i];
    }
    return s;
}

}  // namespace

const RowsFn avx2::rows_f32 = rows_by_dot<dot_float<F32>>;
const RowsFn avx2::rows_f16 = rows_by_dot<dot_float<F16>>;
const RowsFn avx2::rows_bf16 = rows_by_dot<dot_float<BF16>>;
const RowsFn avx2::rows_q8_0 = rows_by_dot<dot_q8_0>;
const RowsFn avx2::rows_q4_0 = rows_by_dot<dot_q4_0>;
const RowsFn avx2::rows_q4_k = rows_qk45<false>;
const RowsFn avx2::rows_q5_k = rows_qk45<true>;
const RowsFn avx2::rows_q6_k = rows_by_dot<dot_q6_k>;
const RowsFn avx2::rows_iq1_s = rows_by_dot<dot_iq1_s>;
const RowsFn avx2::rows_tq2_0 = rows_by_dot<dot_tq2_0>;
const RowsFn avx2::rows_tq1_0 = rows_by_dot<dot_tq1_0>;
#endif
