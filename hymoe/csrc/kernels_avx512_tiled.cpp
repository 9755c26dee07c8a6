// AVX512-VNNI batch kernels: rows repacked 16 at a time into an L2 tile, then a register-blocked
// integer GEMM over many tokens. Compiled with the AVX512 flags only; no C++ library (common.h).
//
// Why: the per-row kernels keep lanes along k, so every 64 weights of every (row, token) pair pay a
// conversion and two float multiplies next to one vpdpbusd; past ~8 tokens those float steps, not
// memory, bound them (Q8_0 at batch 512: ~37% of torch's bf16 GEMM). Here lane i is row i: a
// 32-weight block is 8 vpdpbusd per 16 rows and token (activation bytes broadcast from memory), and
// the float work (scale, offset) happens once per block, so 8 integer steps share 4 float ones.
// Repacking costs a decode and a 16x8 dword transpose per 512 weights, shared by every token.
//
// Every format handled here is, per block of kBlock weights (32; 16 for Q6_K), value = scale * code
// - min with byte codes 0..255 (Q8_0: q + 128; Q4_0, Q4_K, Q5_K, Q6_K: the stored bits; TQ2_0,
// IQ1_S: ternary + 1), so one kernel serves them all; TQ1_0 stays on the per-row kernels.
#if defined(__x86_64__) || defined(_M_X64)
#include <stdlib.h>

#include "iq1s_grid.h"
#include "simd_avx512.h"

namespace {

RowsFn g_rows_kernel[FMT_SLOTS];  // the per-row kernels: small batches and remainder rows
int g_tiled_min = 6;              // tokens from which the tile pays for itself (A/B: 4-12; hymoe_tune 5)
const int kLanes = 16;            // rows per tile

// ---- decoders: one super unit (256 weights) of one row -> codes in k order, scale and min per
// block of kBlock, written with a stride so they land straight in the tile's [block][row] arrays.
struct DQ8_0 {
    static const int kBlock = 32;
    static const int kBytes = 8 * sizeof(BlockQ8_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ8_0* b = (const BlockQ8_0*)p;
        for (int j = 0; j < 8; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i*)b[j].qs);
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)));
            const float d = h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = 128.f * d;
        }
    }
};

struct DQ4_0 {
    static const int kBlock = 32;
    static const int kBytes = 8 * sizeof(BlockQ4_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ4_0* b = (const BlockQ4_0*)p;
        for (int j = 0; j < 8; j++) {
            __m128i q = _mm_loadu_si128((const __m128i*)b[j].qs);  // low nibbles: 0-15, high: 16-31
            _mm_storeu_si128((__m128i*)(codes + 32 * j), _mm_and_si128(q, _mm_set1_epi8(0x0F)));
            _mm_storeu_si128((__m128i*)(codes + 32 * j + 16), _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F)));
            const float d = h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = 8.f * d;
        }
    }
};

template <bool kFive>
struct DQ45 {  // Q4_K / Q5_K: 32 bytes of nibbles per pair of sub-blocks (low: 2i, high: 2i+1)
    static const int kBlock = 32;
    static const int kBytes = kFive ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ4_K* b = (const BlockQ4_K*)p;  // d, dmin, scales: the same place in both
        const float d = h2f(b->d), dmin = h2f(b->dmin);
        const uint8_t* qh = kFive ? p + 16 : nullptr;
        const uint8_t* qs = kFive ? p + 48 : p + 16;
        for (int j = 0; j < 8; j++) {
            uint8_t s, m;
            k_scale_min(b->scales, j, &s, &m);
            sc[j * stride] = d * s;
            mn[j * stride] = dmin * m;
        }
        for (int i = 0; i < 4; i++) {
            __m256i q = _mm256_loadu_si256((const __m256i*)(qs + 32 * i));
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
        const float d = h2f(b->d);
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

struct DIQ1_S {  // value = dl * (grid + delta): codes grid + 1, min dl * (1 - delta)
    static const int kBlock = 32;
    static const int kBytes = sizeof(BlockIQ1_S);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ1_S* b = (const BlockIQ1_S*)p;
        const float d = h2f(b->d);
        for (int j = 0; j < 8; j++) {
            const int qh = b->qh[j];
            long long g[4];
            for (int l = 0; l < 4; l++) g[l] = (long long)kIq1sGrid[b->qs[4 * j + l] | (((qh >> (3 * l)) & 7) << 8)];
            const __m256i v = _mm256_set_epi64x(g[3], g[2], g[1], g[0]);  // bytes -1, 0, 1 -> 0, 1, 2
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_add_epi8(v, _mm256_set1_epi8(1)));
            const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
            sc[j * stride] = dl;
            mn[j * stride] = dl * (qh & 0x8000 ? 1.125f : 0.875f);
        }
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
        const float d = h2f(b->d);
        for (int j = 0; j < 16; j++) {
            sc[j * stride] = d * b->scales[j];
            mn[j * stride] = 32.f * d * b->scales[j];
        }
    }
};

// ---- the tile: per block of 32, 8 x [16 rows x 4 code bytes], then the scales and mins [block][row]
struct Tile {
    uint8_t* codes = nullptr;
    float *sc = nullptr, *mn = nullptr, *ad = nullptr, *ads = nullptr;
    size_t cap = 0;
    ~Tile() { free(codes); }
    // n weights per row, up to 64 tokens' per-block activation scales (blocks of 16 at least)
    bool reserve(int n) {
        const size_t need = (size_t)n * kLanes + (size_t)(n / 16) * kLanes * 8 + (size_t)64 * (n / 16) * 8;
        if (need <= cap) return true;
        free(codes);
        codes = (uint8_t*)aligned_alloc(64, (need + 63) & ~(size_t)63);
        cap = codes ? need : 0;
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

// 16 rows x 32 code bytes (row i at stage + 256 * i) -> 8 vectors, vector q = bytes 4q..4q+3 of
// every row, lane i = row i: two 8x8 dword transposes side by side (rows 0-7 and 8-15).
inline void transpose_block(const uint8_t* stage, uint8_t* dst) {
    __m512i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(stage + 256 * i))),
                                  _mm256_loadu_si256((const __m256i*)(stage + 256 * (i + 8))), 1);
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

template <class D>
void repack(const uint8_t* w, size_t row_bytes, int n, Tile& tile) {
    alignas(64) uint8_t stage[kLanes * 256];
    const size_t ahead = rows_ahead(row_bytes, kLanes);  // the next tile's rows
    for (int u = 0; u < n / 256; u++) {
        for (int i = 0; i < kLanes; i++) {
            const uint8_t* blk = w + i * row_bytes + (size_t)u * D::kBytes;
            prefetch_ahead(blk, D::kBytes, ahead);
            const size_t first = (size_t)(256 / D::kBlock) * u * kLanes + i;  // this unit's first block, row i
            D::decode(blk, stage + 256 * i, tile.sc + first, tile.mn + first, kLanes);
        }
        for (int j = 0; j < 8; j++) transpose_block(stage + 32 * j, tile.codes + (size_t)(8 * u + j) * 512);
    }
}

// out[t][0..15] = the 16 tile rows against NT tokens. aq[t]: int8 activations in k order; ad[t][b],
// ads[t][b]: per block of kBlock their scale and scale * sum.
template <int NT, int kBlock>
void tile_tokens(const Tile& tile, int blocks, const int8_t* const* aq, const float* const* ad,
                 const float* const* ads, float* out, size_t out_stride) {
    __m512 acc[NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        const uint8_t* cb = tile.codes + (size_t)b * kBlock * kLanes;
        __m512i p[NT];
        for (int t = 0; t < NT; t++) p[t] = _mm512_setzero_si512();
        for (int q = 0; q < kBlock / 4; q++) {
            const __m512i wv = _mm512_load_si512((const void*)(cb + 64 * q));
            for (int t = 0; t < NT; t++) {
                int32_t a4;
                memcpy(&a4, aq[t] + kBlock * b + 4 * q, 4);
                p[t] = _mm512_dpbusd_epi32(p[t], wv, _mm512_set1_epi32(a4));
            }
        }
        const __m512 sc = _mm512_load_ps(tile.sc + (size_t)b * kLanes), mn = _mm512_load_ps(tile.mn + (size_t)b * kLanes);
        for (int t = 0; t < NT; t++) {
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t]), _mm512_mul_ps(sc, _mm512_set1_ps(ad[t][b])), acc[t]);
            acc[t] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(ads[t][b]), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * out_stride, acc[t]);
}

const int kNT = 8;  // tokens per pass: 2 x 8 accumulators stay in registers

template <class D, int FMT, bool kAct256>
void rows_tiled16(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                  float* out, size_t out_stride) {
    Tile& tile = t_tile;
    if (ntok < g_tiled_min || n % 256 || nrows < kLanes || ntok > 64 || !tile.reserve(n))
        return g_rows_kernel[FMT](w, row_bytes, nrows, acts, ntok, n, out, out_stride);
    tile.carve(n);
    const int blocks = n / D::kBlock, per256 = 256 / D::kBlock;
    // per token: int8 values in k order and, per block of 32, scale and scale * sum
    const int8_t* aq[64];
    const float *ad[64], *ads[64];
    for (int t = 0; t < ntok; t++) {
        if (kAct256) {  // the K-quants' per-256 activations (as the per-row kernels, so results agree)
            ActView v = act_view(acts[t], n);
            float* d = tile.ad + (size_t)t * blocks;
            float* s = tile.ads + (size_t)t * blocks;
            for (int b = 0; b < blocks; b++) {
                d[b] = v.dk[b / per256];
                s[b] = v.dk[b / per256] * (float)(D::kBlock == 16 ? v.bk16[b] : v.bk32[b]);
            }
            aq[t] = v.qk, ad[t] = d, ads[t] = s;
        } else {
            ActView v = act_view(acts[t], n);
            aq[t] = v.qs;
            ad[t] = v.d;
            ads[t] = (const float*)((const uint8_t*)acts[t] + extras_at(n) + 2 * (size_t)n);  // dsum
        }
    }
    const int main = nrows / kLanes * kLanes;
    for (int r = 0; r < main; r += kLanes) {
        repack<D>(w + (size_t)r * row_bytes, row_bytes, n, tile);
        int t = 0;
        for (; t + kNT <= ntok; t += kNT)
            tile_tokens<kNT, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, out + t * out_stride + r, out_stride);
        float* o = out + t * out_stride + r;
        switch (ntok - t) {
            case 7: tile_tokens<7, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 6: tile_tokens<6, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 5: tile_tokens<5, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 4: tile_tokens<4, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 3: tile_tokens<3, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 2: tile_tokens<2, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            case 1: tile_tokens<1, D::kBlock>(tile, blocks, aq + t, ad + t, ads + t, o, out_stride); break;
            default: break;
        }
    }
    if (main < nrows)
        g_rows_kernel[FMT](w + (size_t)main * row_bytes, row_bytes, nrows - main, acts, ntok, n, out + main, out_stride);
}

}  // namespace

void tune_avx512_tiled(int value) { g_tiled_min = value; }

void fill_avx512_tiled(KernelTable* t) {
    for (int f = 0; f < FMT_SLOTS; f++) g_rows_kernel[f] = t->rows[f];
    t->rows[Q8_0] = rows_tiled16<DQ8_0, Q8_0, false>;
    t->rows[Q4_0] = rows_tiled16<DQ4_0, Q4_0, false>;
    t->rows[IQ1_S] = rows_tiled16<DIQ1_S, IQ1_S, false>;
    t->rows[Q4_K] = rows_tiled16<DQ45<false>, Q4_K, true>;
    t->rows[Q5_K] = rows_tiled16<DQ45<true>, Q5_K, true>;
    t->rows[TQ2_0] = rows_tiled16<DTQ2_0, TQ2_0, true>;
    t->rows[Q6_K] = rows_tiled16<DQ6_K, Q6_K, true>;
}
#else
#include "common.h"
void fill_avx512_tiled(KernelTable*) {}
void tune_avx512_tiled(int) {}
#endif
