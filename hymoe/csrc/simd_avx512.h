// Inline helpers shared by the AVX512 kernel files. Include only from files compiled with the
// AVX512 flags (see setup.py); everything here has internal linkage.
#pragma once
#include <immintrin.h>

#include "common.h"

namespace {

const int kTile = 4;        // tokens per pass
// rows per pass for a single token, where the format names no kDecodeRows: its activations load once
// for 4 rows. Formats cheap to decode stream better one row at a time (kDecodeRows = 1): one demand
// stream as well as one prefetch stream a thread (Zen 5, deepseek-v3 layer, one-process A/B: Q8_0
// +37% on a quiet bus, Q6_K +23%, Q5_0 +13% contended); the codebook and 2-bit formats, bound by
// their arithmetic, lose 5-30% that way and keep 4.
const int kRowsDecode = 4;
template <class F>
constexpr auto decode_rows_of(int) -> decltype(F::kDecodeRows + 0) { return F::kDecodeRows; }
template <class F>
constexpr int decode_rows_of(...) { return kRowsDecode; }

// The AVX512 activation layout: the portable one, then
//   [pad to 64][dexp: n/64 x 16 f32][ns4: n/4 i32][dsum: n/32 f32][paired: n i8][lanes: n i8]
// (paired and lanes: rows of 256s only)
static inline size_t extras_at(int n) { return (act_bytes(n) + 63) & ~(size_t)63; }
static inline size_t paired_at(int n) { return extras_at(n) + (size_t)n + (size_t)n + (size_t)(n / 32) * 4; }
static inline size_t lanes_at(int n) { return paired_at(n) + (size_t)n; }

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
static inline __m512 two_scales(float lo, float hi) {  // lanes 0-7 = lo, 8-15 = hi
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}
static inline __m512 two_scales_f16(uint16_t lo, uint16_t hi) {  // the same from two fp16 scales:
    // one conversion and one permute, instead of two scalar conversions, broadcasts and an insert
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)lo | ((int)hi << 16)));
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f));
}
static inline __m512i nibbles_of_32_bytes(const uint8_t* q) {  // lanes [low nibbles | high nibbles]
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)q));
    return _mm512_and_si512(_mm512_srlv_epi16(v, shift), _mm512_set1_epi8(0x0F));
}
static inline __m512i bits_of_32_bytes(const uint8_t* q, int shift_lo, int shift_hi, int mask) {
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)q));
    __m512i s = _mm512_inserti64x4(_mm512_set1_epi16((short)shift_lo), _mm256_set1_epi16((short)shift_hi), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(v, s), _mm512_set1_epi8((char)mask));
}
static inline __m512i bits_of_two_32_bytes(const uint8_t* q, int k_lo, int k_hi) {  // (q >> k) & 1, both halves
    __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)q));
    __m512i s = _mm512_inserti64x4(_mm512_set1_epi16((short)k_lo), _mm256_set1_epi16((short)k_hi), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(v, s), _mm512_set1_epi8(1));
}
static inline __m512 lanes_from(__m512 table, int i0, int i1) {  // [table[i0] x8 | table[i1] x8]
    __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(i0), _mm256_set1_epi32(i1), 1);
    return _mm512_permutexvar_ps(idx, table);
}

// 32 bytes from lo into the low half and 32 from hi into the high half (one load when adjacent)
static inline __m512i load_pair(const void* lo, const void* hi, bool is_natural) {
    if (is_natural) return _mm512_loadu_si512(lo);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)lo)),
                              _mm256_loadu_si256((const __m256i*)hi), 1);
}

// 16 rows x 8 dwords (row i at src + stride * i) -> 8 vectors at dst: vector q = dword q of every
// row, lane i = row i. Two 8x8 dword transposes side by side (rows 0-7 and 8-15).
static inline void transpose16x8_dwords(const uint8_t* src, size_t stride, uint8_t* dst) {
    __m512i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(src + stride * i))),
                                  _mm256_loadu_si256((const __m256i*)(src + stride * (i + 8))), 1);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 8; g += 4) {
        u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    // u[c] (c < 4): 128-bit lanes [rows 0-3 | rows 0-3 | rows 8-11 | rows 8-11] of dwords c, c + 4;
    // u[c + 4] the same for rows 4-7 and 12-15
    const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0), hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int c = 0; c < 4; c++) {
        _mm512_storeu_si512((void*)(dst + 64 * c), _mm512_permutex2var_epi64(u[c], lo, u[c + 4]));
        _mm512_storeu_si512((void*)(dst + 64 * (c + 4)), _mm512_permutex2var_epi64(u[c], hi, u[c + 4]));
    }
}

// 16 rows x 16 dwords (a whole 64-byte line of each row) -> 16 vectors at dst: vector q = dword q
// of every row, lane i = row i. Each line is loaded once: rows 4 KiB apart share an L1 set, so
// read in two 32-byte halves, most lines would be fetched twice.
static inline void transpose16x16_dwords(const uint8_t* src, size_t stride, uint8_t* dst) {
    __m512i r[16], t[16], u[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((const void*)(src + stride * i));
    for (int i = 0; i < 16; i += 2) {  // 128-bit lane c: rows i, i + 1 of dwords 4c, 4c + 1 | 4c + 2, 4c + 3
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int j = 0; j < 16; j += 4) {  // u[j + m], 128-bit lane c: dword 4c + m of rows j..j + 3
        u[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
        u[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
        u[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
        u[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
    }
    for (int m = 0; m < 4; m++) {  // gather lane c of u[m], u[4 + m], u[8 + m], u[12 + m]
        const __m512i v02 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88), v13 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xDD);
        const __m512i w02 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88), w13 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xDD);
        _mm512_storeu_si512((void*)(dst + 64 * m), _mm512_shuffle_i32x4(v02, w02, 0x88));         // lane 0: dword m
        _mm512_storeu_si512((void*)(dst + 64 * (4 + m)), _mm512_shuffle_i32x4(v13, w13, 0x88));   // dword 4 + m
        _mm512_storeu_si512((void*)(dst + 64 * (8 + m)), _mm512_shuffle_i32x4(v02, w02, 0xDD));   // dword 8 + m
        _mm512_storeu_si512((void*)(dst + 64 * (12 + m)), _mm512_shuffle_i32x4(v13, w13, 0xDD));  // dword 12 + m
    }
}

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
// [sum a0, sum a1, sum a2, sum a3] in 13 shuffles and adds (four reductions take ~32)
static inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));  // per 128: a0 a1 a0 a1
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));  // a0 a1 a2 a3
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
// acc with an 8-lane term added to its lanes 0-7 (the sum of all lanes then includes it)
static inline __m512 add_low8(__m512 acc, __m256 v) {
    return _mm512_mask_add_ps(acc, 0x00FF, acc, _mm512_castps256_ps512(v));
}
// out[0..NR) of one token from NR row accumulators
template <int NR>
static inline void store_sums(__m512* acc, float* out) {
    if (NR == 4) {
        _mm_storeu_ps(out, hsum4(acc[0], acc[1], acc[2], acc[3]));
    } else {
        for (int i = 0; i < NR; i++) out[i] = hsum(acc[i]);
    }
}
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// NR rows x NT tokens per pass: each row's weights are unpacked once for NT tokens, and each
// token's activations are loaded once for NR rows.
// Kernels read rows in contiguous ranges and fetch (into L2) ahead of what they read. A pass reads
// NR rows side by side, but the fetches run through the range in address order, one stream: the
// pass's column u stands for its bytes [NR u kBytes, NR (u + 1) kBytes) (pass_at), and those bytes
// `ahead` further on are fetched. The DRAM then sees one sequential stream per thread, not NR
// interleaved ones (each row's own stream ran at 0.71 of the probe's bandwidth in a pure read on a
// contended Zen 5 bus, one stream at 0.90; in the kernels +4-19% there, 0.94-1.01 on a quiet bus).
// A column late in a row is fetched earlier than it is read by up to NR - 1 rows' worth of a
// pass, so `ahead` is a whole number of passes (at least Tuning::prefetch_bytes) plus one: every
// block is fetched at least one pass before it is read.
static inline size_t rows_ahead(size_t row_bytes, int nr) {
    const size_t pass = row_bytes * (size_t)nr;
    return ((size_t)g_tuning.prefetch_bytes + pass - 1) / pass * pass + pass;
}
// the position in the range that column u of a pass of nr rows starting at row stands for
static inline const uint8_t* pass_at(const uint8_t* row, int nr, int u, int block_bytes) {
    return row + (size_t)nr * (size_t)u * (size_t)block_bytes;
}
// One kernel call's prefetch stream over its row range [w, w + bytes): `ahead` bytes past the
// position it is given, running on into the range the thread reads next (RangeHint) rather than past
// the end, and fetching the range's own first `ahead` bytes up front unless the previous call's
// stream already did.
struct Ahead {
    const uint8_t *end, *next;
    size_t ahead;
    Ahead(const uint8_t* w, size_t bytes, size_t ahead_) : end(w + bytes), ahead(ahead_) {
        RangeHint& h = range_hint();
        next = h.next;
        const bool is_fetched = h.fetched == w;
        h.next = nullptr;
        h.fetched = bytes >= ahead ? next : nullptr;
        if (is_fetched) return;
        const size_t head = ahead < bytes ? ahead : bytes;
        for (size_t l = 0; l < head; l += 64) _mm_prefetch((const char*)w + l, _MM_HINT_T1);
    }
    void operator()(const uint8_t* blk, int bytes) const {
        const uint8_t* p = blk + ahead;
        if (p >= end) {
            if (!next) return;
            p = next + (p - end);
        }
        for (int l = 0; l < bytes; l += 64) _mm_prefetch((const char*)p + l, _MM_HINT_T1);
    }
};

// A kernel call that reads the same rows once per group of tokens: each group's stream runs on
// into the rows again, and only the last group's into the range the caller named.
struct TokenGroups {
    RangeHint& h;
    const uint8_t *w, *after;
    explicit TokenGroups(const uint8_t* rows) : h(range_hint()), w(rows), after(h.next) {}
    void next_group(bool is_last) { h.next = is_last ? after : w; }
};

// Shared by every quantized format: a pass kernel Tile<F, NR, NT>::run handles NR rows x NT tokens;
// rows go in passes of NR (the remainder one at a time), tokens in tiles of kTile, and a single
// token (decode) in passes of kRowsDecode rows.
template <template <class, int, int> class Tile, class F, int NR, int NT>
static inline void rows_split(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n,
                              float* out, size_t out_stride) {
    const int main = nrows / NR * NR;
    if (main == nrows) return Tile<F, NR, NT>::run(w, row_bytes, nrows, acts, n, out, out_stride);
    RangeHint& h = range_hint();
    const uint8_t* after = h.next;
    if (main) {
        h.next = w + main * row_bytes;  // the remaining rows follow
        Tile<F, NR, NT>::run(w, row_bytes, main, acts, n, out, out_stride);
    }
    h.next = after;
    Tile<F, 1, NT>::run(w + main * row_bytes, row_bytes, nrows - main, acts, n, out + main, out_stride);
}

template <template <class, int, int> class Tile, class F>
static inline void rows_tiled(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok,
                              int n, float* out, size_t out_stride) {
    TokenGroups groups(w);
    int t = 0;
    for (; t + kTile <= ntok; t += kTile) {
        groups.next_group(t + kTile == ntok);
        rows_split<Tile, F, 2, kTile>(w, row_bytes, nrows, acts + t, n, out + t * out_stride, out_stride);
    }
    groups.next_group(true);
    float* o = out + t * out_stride;
    switch (ntok - t) {
        case 3: rows_split<Tile, F, 2, 3>(w, row_bytes, nrows, acts + t, n, o, out_stride); break;
        case 2: rows_split<Tile, F, 2, 2>(w, row_bytes, nrows, acts + t, n, o, out_stride); break;
        case 1: rows_split<Tile, F, decode_rows_of<F>(0), 1>(w, row_bytes, nrows, acts + t, n, o, out_stride); break;
        default: break;
    }
}
}  // namespace

// exp on [-88, 88] by 2^n * p(r): degree-6 Taylor on |r| <= ln2/2, relative error ~1e-7
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}
