// BF16 expert weights in batches, with AVX512-BF16's vdpbf16ps (Zen 4, Cooper Lake, Sapphire
// Rapids and later): compiled with those flags only, chosen at run time when the CPU has them
// (setup.py builds a stub where the compiler lacks them).
//
// The per-row float kernels widen every bf16 weight to f32 for every token (one conversion and
// one FMA per weight and token: 24-36% of the bf16 GEMM figure at batch 512). Here 32 rows at a
// time are repacked once into a tile of k pairs (two groups of 16 lanes, lane i = row i, the dword
// of weights 2p, 2p+1); one vdpbf16ps is then 32 multiply-adds for 16 rows and one token, its
// activation pair broadcast once for both groups. The activations arrive rounded to bf16 (the job
// rounds them for every BF16 path, see round_to_bf16), so converting them here is exact and the
// products and f32 sums are those of the per-row kernels, in another order.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(HYMOE_NO_AVX512_BF16)

#include "kernels.h"
#include "simd_avx512.h"

namespace {

const int kNT = 8;   // tokens per pass at most: 2 x 8 accumulators (32 rows x 8 tokens) in registers
const int kRows = 32;  // rows per tile: two lane groups of 16, so one broadcast feeds two vdpbf16ps

// per thread: the tile (two halves of [n/2][16] dwords: rows 0-15, 16-31), up to 64 tokens'
// activations in bf16, and 32 zero-padded rows for the last rows of a range (so every row sees the
// same arithmetic)
thread_local ScratchBuffer t_bf16;

// out[t][0..31] for NT tokens: acc += tile pair p x the token's pair p, broadcast
template <int NT>
void tokens(const uint8_t* tile, int pairs, const uint32_t* const* a, float* out, size_t out_stride, NextTile& next) {
    const uint8_t* half = tile + (size_t)pairs * 64;  // rows 16-31
    __m512 lo[NT], hi[NT];  // rows 0-15, 16-31
    for (int t = 0; t < NT; t++) lo[t] = hi[t] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p++) {
        next.step();
        const __m512bh w0 = (__m512bh)_mm512_load_si512((const void*)(tile + 64 * (size_t)p));
        const __m512bh w1 = (__m512bh)_mm512_load_si512((const void*)(half + 64 * (size_t)p));
        for (int t = 0; t < NT; t++) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[t][p]);
            lo[t] = _mm512_dpbf16_ps(lo[t], w0, x);
            hi[t] = _mm512_dpbf16_ps(hi[t], w1, x);
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_ps(out + t * out_stride, lo[t]);
        _mm512_storeu_ps(out + t * out_stride + 16, hi[t]);
    }
}

int rows_bf16(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
              size_t out_stride) {
    uint8_t* tile =
        ntok > 64 || n % 32 ? nullptr : t_bf16.reserve((size_t)n * 64 + (size_t)64 * n * 2 + (size_t)n * 64);
    if (!tile) return 0;
    uint8_t* act = tile + (size_t)n * 64;
    uint8_t* pad = act + (size_t)64 * n * 2;
    // activations (bf16 values already) -> bf16, 32 at a time; token t's pair p is dword p of a[t]
    const uint32_t* a[64];
    for (int t = 0; t < ntok; t++) {
        const float* x = (const float*)acts[t];
        uint16_t* dst = (uint16_t*)act + (size_t)t * n;
        for (int k = 0; k < n; k += 32)
            _mm512_storeu_si512((void*)(dst + k), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k)));
        a[t] = (const uint32_t*)dst;
    }
    const int pairs = n / 2;
    TiledRange range(w, nrows * row_bytes, nrows * row_bytes, row_bytes * kRows);  // a partial last tile is padded
    alignas(64) float part[64 * kRows];  // the outputs of a partial tile
    for (int r = 0; r < nrows; r += kRows) {
        const int nr = nrows - r < kRows ? nrows - r : kRows;
        const uint8_t* rows = w + (size_t)r * row_bytes;
        size_t stride = row_bytes;
        if (nr < kRows) {
            memset(pad, 0, (size_t)n * 2 * kRows);
            for (int i = 0; i < nr; i++) memcpy(pad + (size_t)i * n * 2, rows + i * row_bytes, (size_t)n * 2);
            rows = pad, stride = (size_t)n * 2;
        }
        for (int k = 0; k < n; k += 32) {  // 32 weights (16 pairs, one line) of 16 rows per transpose
            transpose16x16_dwords(rows + 2 * k, stride, tile + (size_t)k * 32);
            transpose16x16_dwords(rows + 16 * stride + 2 * k, stride, tile + (size_t)n * 32 + (size_t)k * 32);
        }
        float* dst = nr == kRows ? out + r : part;
        const size_t ds = nr == kRows ? out_stride : kRows;
        const int steps = pairs * ((ntok + kNT - 1) / kNT);  // the compute's calls of next.step()
        NextTile next = range.next_of(w + (size_t)r * row_bytes, steps);
        balanced_token_groups<kNT>(ntok, [&](auto nt, int t) {  // (9 tokens as 4 + 5: 8-13% faster than 8 + 1)
            tokens<decltype(nt)::value>(tile, pairs, a + t, dst + t * ds, ds, next);
        });
        if (nr < kRows)
            for (int j = 0; j < ntok; j++) memcpy(out + j * out_stride + r, part + j * kRows, (size_t)nr * 4);
    }
    range.hand_over();
    return nrows;
}

}  // namespace

const RowsFn avx512_bf16::tile_bf16 = rows_bf16;
#elif defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
const RowsFn avx512_bf16::tile_bf16 = nullptr;
#endif
