// The batch tiles shared by the AVX512 and AVX2 kernels: per-format decoders of a 256-weight unit
// into byte codes with a scale and offset per block, the thread's tile buffer, and the driver that
// repacks 16 rows at a time and hands the tile to an ISA's transpose and token kernels.
// Only AVX2/F16C intrinsics here: included by files compiled with at least those flags. No C++
// library (see common.h); everything has internal linkage.
//
// Why tiles: the per-row kernels keep SIMD lanes along k, so every few dozen weights of every (row,
// token) pair pay a conversion and float multiplies next to the integer dot; past ~8 tokens those
// float steps bound them. In a tile lane i is row i: a block of 32 weights is 8 integer dot steps
// per 16 rows and token (activation bytes broadcast), and the float work (scale, offset) happens
// once per block. Repacking costs a decode and a 16x8 dword transpose per 512 weights, shared by
// every token of the expert.
//
// Every format handled here is, per block of kBlock weights (32; 16 for Q6_K), value = scale * code
// - min with byte codes 0..255 (Q8_0: q + 128; Q4_0, Q4_K, Q5_K, Q6_K: the stored bits; TQ2_0,
// IQ1_S, TQ1_0: ternary + 1), so one kernel serves them all.
#pragma once
#include <immintrin.h>

#include "common.h"
#include "iq1s.h"
#include "k_scales.h"
#include "simd_avx2.h"

namespace {

const int kLanes = 16;  // rows per tile

inline float tile_h2f(uint16_t h) { return _cvtsh_ss(h); }

// a decoder's 8 block scales and mins, computed in vectors, into the tile's [block][row] arrays:
// scalar int-to-float conversions carry a false dependency each (in vectors, IQ1_S's batches take
// little more than half the time).
inline void store_scales8(__m256 sc8, __m256 mn8, float* sc, float* mn, int stride) {
    alignas(32) float t[16];
    _mm256_store_ps(t, sc8);
    _mm256_store_ps(t + 8, mn8);
    for (int j = 0; j < 8; j++) {
        sc[j * stride] = t[j];
        mn[j * stride] = t[8 + j];
    }
}

// ---- decoders: one super unit (256 weights) of one row -> codes in k order, scale and min per
// block of kBlock, written with a stride so they land straight in the tile's [block][row] arrays.
// Q8_0: codes q + 128 with min 128 d; kSigned keeps the values themselves (min 0), for kernels that
// multiply signed bytes (AVX2, whose vpmaddubsw would saturate on q + 128)
template <bool kSigned>
struct DQ8_0T {
    static const int kBlock = 32;
    static const int kBytes = 8 * sizeof(BlockQ8_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ8_0* b = (const BlockQ8_0*)p;
        const __m256i offset = _mm256_set1_epi8(kSigned ? 0 : (char)0x80);
        for (int j = 0; j < 8; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i*)b[j].qs);
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_xor_si256(q, offset));
            const float d = tile_h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = kSigned ? 0.f : 128.f * d;
        }
    }
};
using DQ8_0 = DQ8_0T<false>;

struct DQ4_0 {
    static const int kBlock = 32;
    static const int kBytes = 8 * sizeof(BlockQ4_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ4_0* b = (const BlockQ4_0*)p;
        for (int j = 0; j < 8; j++) {
            __m128i q = _mm_loadu_si128((const __m128i*)b[j].qs);  // low nibbles: 0-15, high: 16-31
            _mm_storeu_si128((__m128i*)(codes + 32 * j), _mm_and_si128(q, _mm_set1_epi8(0x0F)));
            _mm_storeu_si128((__m128i*)(codes + 32 * j + 16), _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F)));
            const float d = tile_h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = 8.f * d;
        }
    }
};

// Q4_K / Q5_K: 32 bytes of nibbles per pair of sub-blocks (low: 2i, high: 2i+1). kG4: Q4_K_G4
// (common.h), the pair's 32 bytes its pieces i of X and of Y
template <bool kFive, bool kG4 = false>
struct DQ45 {
    static const int kBlock = 32;
    static const int kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        static_assert(!kFive || !kG4, "Q4_K_G4 regroups Q4_K only");
        const uint8_t* qh = kFive ? p + 16 : nullptr;
        const uint8_t* qs = kG4 ? g4_codes(p) : kFive ? p + 48 : p + 16;
        KQ45Scales k;  // d, dmin and the scales: the same place in Q4_K and Q5_K
        k.load(kG4 ? g4_head(p) : p);
        store_scales8(_mm256_mul_ps(_mm256_set1_ps(k.d), _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(k.sc))),
                      _mm256_mul_ps(_mm256_set1_ps(k.dmin), _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(k.mn))), sc, mn, stride);
        for (int i = 0; i < 4; i++) {
            __m256i q = kG4 ? _mm256_loadu2_m128i((const __m128i*)(qs + 64 + 16 * i), (const __m128i*)(qs + 16 * i))
                            : _mm256_loadu_si256((const __m256i*)(qs + 32 * i));
            __m256i lo = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
            if (kFive) {  // bit j of qh[l] is the fifth bit of sub-block j's weight l
                const __m256i h = _mm256_loadu_si256((const __m256i*)qh), one = _mm256_set1_epi8(1);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * i), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * i + 1), one), 4));
            }
            _mm256_storeu_si256((__m256i*)(codes + 64 * i), lo);
            _mm256_storeu_si256((__m256i*)(codes + 64 * i + 32), hi);
        }
    }
};

struct DTQ2_0 {  // weight 128h + 32l + m is 2-bit field l of byte 32h + m; value = d * (code - 1)
    static const int kBlock = 32;
    static const int kBytes = sizeof(BlockTQ2_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockTQ2_0* b = (const BlockTQ2_0*)p;
        const float d = tile_h2f(b->d);
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i*)(b->qs + 32 * h));
            for (int l = 0; l < 4; l++)
                _mm256_storeu_si256((__m256i*)(codes + 128 * h + 32 * l),
                                    _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), _mm256_set1_epi8(3)));
        }
        for (int j = 0; j < 8; j++) {
            sc[j * stride] = d;
            mn[j * stride] = d;
        }
    }
};

// TQ1_0: five base-3 digits per byte, digit k of q = floor(3 (q 3^k mod 256) / 256); the digits
// of bytes 0-31 are weights 32k.., of bytes 32-47 weights 160 + 16k.., of qh weights 240 + 4k..
// (k < 4), so each lands in k order with one store; value = d * (digit - 1)
struct DTQ1_0 {
    static const int kBlock = 32;
    static const int kBytes = sizeof(BlockTQ1_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockTQ1_0* b = (const BlockTQ1_0*)p;
        __m256i pv[5], pw[5];
        tq1_block_powers(b->qs, b->qh, pv, pw);
        for (int k = 0; k < 5; k++) {
            _mm256_storeu_si256((__m256i*)(codes + 32 * k), tq1_digit(pv[k]));
            const __m256i dw = tq1_digit(pw[k]);
            _mm_storeu_si128((__m128i*)(codes + 160 + 16 * k), _mm256_castsi256_si128(dw));
            if (k < 4) {
                const int32_t t = _mm_cvtsi128_si32(_mm256_extracti128_si256(dw, 1));
                memcpy(codes + 240 + 4 * k, &t, 4);
            }
        }
        const float d = tile_h2f(b->d);
        for (int j = 0; j < 8; j++) {
            sc[j * stride] = d;
            mn[j * stride] = d;
        }
    }
};

struct DIQ1_S {  // value = dl * (grid + delta): codes grid + 1, min dl * (1 - delta)
    static const int kBlock = 32;
    static const int kBytes = sizeof(BlockIQ1_S);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ1_S* b = (const BlockIQ1_S*)p;
        alignas(32) uint16_t idx[32];
        iq1s_indices(b, idx);
        for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i*)(codes + 32 * j), iq1s_codes32(idx + 4 * j));
        __m256 dl, omd;
        iq1s_scales8(b, &dl, &omd);
        store_scales8(dl, _mm256_mul_ps(dl, omd), sc, mn, stride);
    }
};

struct DQ6_K {  // half h, group g, l < 32: weight 128h + 32g + l, 4 low bits in ql, 2 high in qh;
    // value = d * scales[w / 16] * (code - 32)
    static const int kBlock = 16;
    static const int kBytes = sizeof(BlockQ6_K);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ6_K* b = (const BlockQ6_K*)p;
        const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i*)(b->qh + 32 * h));
            uint8_t* c = codes + 128 * h;
            _mm256_storeu_si256((__m256i*)c, _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                                             _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)));
            _mm256_storeu_si256((__m256i*)(c + 32), _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                                                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)));
            _mm256_storeu_si256((__m256i*)(c + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                                                    _mm256_and_si256(qh, m2)));
            _mm256_storeu_si256((__m256i*)(c + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                                                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)));
        }
        const float d = tile_h2f(b->d);
        const __m128i s8 = _mm_loadu_si128((const __m128i*)b->scales);
        for (int h = 0; h < 2; h++) {
            const __m256 s = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s8, 8 * h))));
            store_scales8(s, _mm256_mul_ps(s, _mm256_set1_ps(32.f)), sc + 8 * h * stride, mn + 8 * h * stride, stride);
        }
    }
};

// A decoder's codes as signed bytes (code - 128), its mins moved to match: for kernels that
// multiply signed weights (AVX2's vpmaddubsw would saturate on codes of 64 and more, lowbit.h)
template <class D>
struct Signed {
    static const int kBlock = D::kBlock, kBytes = D::kBytes;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        D::decode(p, codes, sc, mn, stride);
        for (int i = 0; i < 256; i += 32) {
            const __m256i c = _mm256_loadu_si256((const __m256i*)(codes + i));
            _mm256_storeu_si256((__m256i*)(codes + i), _mm256_xor_si256(c, _mm256_set1_epi8((char)0x80)));
        }
        for (int j = 0; j < 256 / kBlock; j++) mn[j * stride] -= 128.f * sc[j * stride];
    }
};

// ---- the tile: per block of kBlock, kBlock / 4 x [16 rows x 4 code bytes]; then the scales and mins
// [block][row], and the tokens' activation scales and scale * sum [token][block]
struct Tile {
    ScratchBuffer mem;
    uint8_t* codes = nullptr;
    float *sc = nullptr, *mn = nullptr, *ad = nullptr, *ads = nullptr;
    // n weights per row, up to 64 tokens' per-block activation scales (blocks of 16 at least)
    bool reserve(int n) {
        codes = mem.reserve((size_t)n * kLanes + (size_t)(n / 16) * kLanes * 8 + (size_t)64 * (n / 16) * 8);
        return codes != nullptr;
    }
    void carve(int n) {
        sc = (float*)(codes + (size_t)n * kLanes);
        mn = sc + (size_t)(n / 16) * kLanes;
        ad = mn + (size_t)(n / 16) * kLanes;
        ads = ad + (size_t)64 * (n / 16);
    }
};
thread_local Tile t_tile;

// Rows [0, nrows) against ntok tokens through tiles: returns the rows computed, those of the whole
// tiles (0 for a shape the tile does not take); dispatch.cpp hands the rest to a per-row kernel.
// Isa provides
//   transpose(stage, dst): 16 rows x 32 code bytes (row i at stage + 256 i) -> 8 x 64 bytes, vector
//     q = bytes 4q..4q+3 of every row, row i at byte 4i;
//   tokens<NT, kBlock>(tile, blocks, aq, ad, ads, out, out_stride, next): out[t][0..15] for NT tokens,
//     calling next.step() once per block;
//   kNT, the tokens per pass.
template <class Isa, class D, bool kAct256>
int rows_tiled16(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                 float* out, size_t out_stride) {
    Tile& tile = t_tile;
    if (n % 256 || nrows < kLanes || ntok > 64 || !tile.reserve(n)) return 0;
    tile.carve(n);
    const int blocks = n / D::kBlock, per256 = 256 / D::kBlock;
    // per token: int8 values in k order and, per block, their scale and scale * sum
    const int8_t* aq[64];
    const float *ad[64], *ads[64];
    for (int t = 0; t < ntok; t++) {
        const ActView v = act_view(acts[t], n);
        float* d = tile.ad + (size_t)t * blocks;
        float* s = tile.ads + (size_t)t * blocks;
        if (kAct256) {  // the K-quants' per-256 activations (as the per-row kernels, so results agree)
            for (int b = 0; b < blocks; b++) {
                d[b] = v.dk[b / per256];
                s[b] = v.dk[b / per256] * (float)(D::kBlock == 16 ? v.bk16[b] : v.bk32[b]);
            }
        } else if (D::kBlock == 16) {  // blocks of 16 against per-32 activations (lowbit.h)
            for (int b = 0; b < blocks; b++) {
                d[b] = v.d[b / 2];
                s[b] = v.d[b / 2] * (float)v.sum16[b];
            }
        } else {
            for (int b = 0; b < blocks; b++) {
                d[b] = v.d[b];
                s[b] = v.d[b] * (float)(v.sum16[2 * b] + v.sum16[2 * b + 1]);
            }
        }
        aq[t] = kAct256 ? v.qk : v.qs, ad[t] = d, ads[t] = s;
    }
    const int main = nrows / kLanes * kLanes;
    TiledRange range(w, nrows * row_bytes, main * row_bytes, row_bytes * kLanes);
    const int passes = (ntok + Isa::kNT - 1) / Isa::kNT;
    alignas(64) uint8_t stage[kLanes * 256];
    for (int r = 0; r < main; r += kLanes) {
        const uint8_t* rows = w + (size_t)r * row_bytes;
        NextTile next = range.next_of(rows, blocks * passes);
        for (int u = 0; u < n / 256; u++) {
            for (int i = 0; i < kLanes; i++) {
                const uint8_t* blk = rows + i * row_bytes + (size_t)u * D::kBytes;
                const size_t first = (size_t)per256 * u * kLanes + i;  // this unit's first block, row i
                D::decode(blk, stage + 256 * i, tile.sc + first, tile.mn + first, kLanes);
            }
            for (int j = 0; j < 8; j++) Isa::transpose(stage + 32 * j, tile.codes + (size_t)(8 * u + j) * 512);
        }
        balanced_token_groups<Isa::kNT>(ntok, [&](auto nt, int t) {
            Isa::template tokens<decltype(nt)::value, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t,
                                                                 out + t * out_stride + r, out_stride, next);
        });
    }
    range.hand_over();
    return main;
}

}  // namespace
