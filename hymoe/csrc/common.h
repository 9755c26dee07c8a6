// Shared definitions of the native kernels: GGUF block layouts, the activation layout, the kernels'
// signatures and their tuning values.
// No STL here: this header is included by the ISA-specific translation units, which must not
// instantiate inline library code (it could be merged with a generic copy and run on the wrong CPU).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// GGUF tensor type ids (ggml_type), the on-disk format of each expert matrix.
enum Fmt : int {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12,
    Q5_K = 13, Q6_K = 14, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21,
    IQ2_S = 22, IQ4_XS = 23, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
    // hymoe's own, never in a file (an id ggml retired): Q4_K regrouped at load (regroup.cpp)
    Q4_K_G4 = 36,
};

// Block layouts, byte for byte as in GGUF (fp16 scales stored as raw uint16).
#pragma pack(push, 1)
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };                                  // 34 B / 32
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };                                 // 18 B / 32
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };      // 144 B / 256
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };  // 176 B
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };        // 210 B
struct BlockIQ1_S { uint16_t d; uint8_t qs[32]; uint16_t qh[8]; };                // 50 B / 256
struct BlockTQ2_0 { uint8_t qs[64]; uint16_t d; };                                // 66 B / 256
struct BlockTQ1_0 { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; };                 // 54 B / 256
// the formats of llama.cpp's older files and of its low-bit "dynamic" mixes (decoders: lowbit*.h)
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };                              // 20 B / 32
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };                  // 22 B / 32
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };               // 24 B / 32
struct BlockIQ4_NL { uint16_t d; uint8_t qs[16]; };                               // 18 B / 32
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };       // 84 B / 256
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };  // 110 B
struct BlockIQ4_XS { uint16_t d, scales_h; uint8_t scales_l[4]; uint8_t qs[128]; };       // 136 B
struct BlockIQ2_XXS { uint16_t d; uint16_t qs[32]; };                             // 66 B / 256
struct BlockIQ2_XS { uint16_t d; uint16_t qs[32]; uint8_t scales[8]; };           // 74 B / 256
struct BlockIQ2_S { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t scales[8]; };      // 82 B
struct BlockIQ3_XXS { uint16_t d; uint8_t qs[96]; };                              // 98 B / 256
struct BlockIQ3_S { uint16_t d; uint8_t qs[64]; uint8_t qh[8]; uint8_t signs[32]; uint8_t scales[4]; };  // 110 B
struct BlockIQ1_M { uint8_t qs[32]; uint8_t qh[16]; uint8_t scales[8]; };         // 56 B / 256
#pragma pack(pop)

static inline float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// float32 -> IEEE half, rounded to nearest even (what torch's .half() stores): the fp16 KV cache
static inline uint16_t f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;
    if (exp == 255) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));  // inf, nan
    const int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);  // overflow: inf
    if (e <= 0) {  // subnormal half, or zero
        if (e < -10) return (uint16_t)sign;
        mant |= 0x800000;
        const int shift = 14 - e;
        uint32_t half = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;  // a carry rounds into the exponent
    return (uint16_t)half;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// float32 -> bf16, rounded to nearest even, NaN kept quiet (what torch's .bfloat16() stores): the
// bf16 KV cache, and round_to_bf16
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u ? u | 0x00400000u : u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// x rounded to bf16, as f32: what every path multiplies BF16 weights with. One rounding per
// activation, as ggml (BF16's vec_dot_type) and torch's bf16 GEMM do, so batches can use the bf16
// dot product and all paths and batch sizes agree.
static inline void round_to_bf16(const float* x, float* out, int n) {
    for (int i = 0; i < n; i++) out[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

// Q4_K_G4: Q4_K's blocks regrouped at load, 4 to a group of 576 bytes (9 cache lines): the 4
// blocks' 16-byte heads (d, dmin, scales) side by side, then each block's 128 code bytes with their
// 16-byte pieces 0, 2, 4, 6 first (X) and 1, 3, 5, 7 after (Y), the order lanes_dot reads
// (kq45_groups.h). Groups lie at addresses that are multiples of 576, so a group holds the same
// bytes as the 4 blocks it replaces: a kernel keeps each block's address as if the blocks lay back to
// back (144 bytes apart) and finds the block's head and codes from it.
enum { kG4Bytes = 576 };
static inline const uint8_t* g4_group(const uint8_t* p) { return p - (uintptr_t)p % kG4Bytes; }
static inline int g4_slot(const uint8_t* p) { return (int)((uintptr_t)p % kG4Bytes / 144); }
static inline const uint8_t* g4_head(const uint8_t* p) { return g4_group(p) + 16 * g4_slot(p); }
static inline const uint8_t* g4_codes(const uint8_t* p) { return g4_group(p) + 64 + 128 * g4_slot(p); }
// Whether `bytes` of a matrix in fmt at w are whole groups where its layout has them (Q4_K_G4).
static inline bool whole_groups(int fmt, const void* w, int64_t bytes) {
    return fmt != Q4_K_G4 || ((uintptr_t)w % kG4Bytes == 0 && bytes % kG4Bytes == 0);
}

// Q4_K / Q5_K: 8 six-bit scales and mins packed in 12 bytes.
static inline void k_scale_min(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

namespace {
// A grow-only 64-byte-aligned buffer: the kernels' per-thread scratch (thread_local). Internal
// linkage, so each ISA's file keeps its own copy.
struct ScratchBuffer {
    uint8_t* p = nullptr;
    size_t cap = 0;
    ~ScratchBuffer() { free(p); }
    uint8_t* reserve(size_t bytes) {  // nullptr when out of memory
        if (bytes > cap) {
            free(p);
            p = (uint8_t*)aligned_alloc(64, (bytes + 63) & ~(size_t)63);
            cap = p ? bytes : 0;
        }
        return p;
    }
};
}  // namespace

// Prefetch hand-over between one thread's consecutive kernel calls. A kernel fetches ahead of
// the block it reads; past the end of its row range those bytes belong to rows that another work
// unit reads much later (at decode up to 8% of the down projection's traffic would be fetched for
// nothing), and the next range would start cold. So the MoE job names the range a thread reads
// next, and a kernel's prefetch stream runs on into it instead. A kernel that ignores the hint is
// still correct; only prefetching depends on it.
struct RangeHint {
    const uint8_t* next = nullptr;     // the range this thread reads after the current call, if known
    const uint8_t* fetched = nullptr;  // a range whose head the previous call already fetched
};
RangeHint& range_hint();  // this thread's (defined in moe.cpp)

// The rows a batch kernel reads after its current tile (the next tile, or the range named by
// RangeHint after the last one), fetched into L2 a line at a time while the tile is computed:
// spread over the compute, not in a burst when the tile is built, so the loads overlap the
// arithmetic (the BF16 tile on cold weights then runs within 5% of its warm speed; a burst costs
// it 12-18%). (__builtin_prefetch: this header is also built without SIMD.)
struct NextTile {
    const char *p = nullptr, *end = nullptr;
    int every = 1, count = 1, lines = 1;  // `lines` lines every `every` steps
    // the tile's compute makes `steps` calls to step(): spread the range's lines over them
    NextTile(const uint8_t* from, size_t bytes, int steps) : p((const char*)from), end(p + (from ? bytes : 0)) {
        const int n = (int)(bytes / 64) > 0 ? (int)(bytes / 64) : 1;
        if (steps >= n) every = count = steps / n;
        else lines = (n + steps - 1) / steps;
    }
    void step() {
        if (--count || p >= end) return;
        count = every;
        for (int l = 0; l < lines; l++) __builtin_prefetch(p + 64 * l, 0, 2);
        p += 64 * lines;
    }
};

// A batch kernel's prefetching over its range [w, w + bytes), read in tiles of tile_bytes up to
// w + tiled (the rest, if any, then goes to a per-row kernel), with RangeHint's hand-over: the
// first tile fetched at once unless the previous call fetched it, and during each tile's compute
// what follows it (at most a tile; after the last, the range read next).
struct TiledRange {
    RangeHint& h;
    const uint8_t *w, *end, *tiled_end, *after;
    size_t tile_bytes;
    TiledRange(const uint8_t* w_, size_t bytes, size_t tiled, size_t tile_bytes_)
        : h(range_hint()), w(w_), end(w_ + bytes), tiled_end(w_ + tiled), after(h.next), tile_bytes(tile_bytes_) {
        if (h.fetched != w)
            for (size_t l = 0; l < tile_bytes && l < bytes; l += 64) __builtin_prefetch((const char*)w + l, 0, 2);
    }
    // the stream a tile starting at `tile` (in the range, not a padded copy) fetches over `steps` steps
    NextTile next_of(const uint8_t* tile, int steps) const {
        const uint8_t* n = tile + tile_bytes;
        if (n >= end) return NextTile(after, tile_bytes, steps);
        return NextTile(n, (size_t)(end - n) < tile_bytes ? (size_t)(end - n) : tile_bytes, steps);
    }
    // after the tiles: the per-row kernel for the rest (if any) reads on into the range read next
    void hand_over() {
        h.next = after;
        h.fetched = tiled_end < end ? tiled_end : after;
    }
};

// Tokens in balanced groups of at most kMax (27 with kMax 8: 7 + 7 + 7 + 6, not 8 + 8 + 8 + 3: a small
// group has too few independent sums to hide the multiply-adds' latency): run(Nt<n>{}, t) for each
// group of n tokens from t on, n a compile-time constant for the kernel's register tile.
template <int N>
struct Nt {
    static constexpr int value = N;
};
template <int N, class Run>
inline void run_with_nt(int nt, int t, Run& run) {
    if constexpr (N > 1) {
        if (nt < N) return run_with_nt<N - 1>(nt, t, run);
    }
    run(Nt<N>{}, t);
}
template <int kMax, class Run>
inline void balanced_token_groups(int ntok, Run run) {
    const int groups = (ntok + kMax - 1) / kMax;
    for (int gi = 0, t = 0; gi < groups; gi++) {
        const int nt = (ntok - t) / (groups - gi);
        run_with_nt<kMax>(nt, t, run);
        t += nt;
    }
}

// An activation row quantised for the integer kernels. Two quantisations of the same row:
//  - blocks of 32, one float scale each, with the sum of each 16 values (Q8_0, Q4_0, IQ1_S, TQ*);
//  - blocks of 256 for the K-quants (one scale per super-block lets their sub-block scales be
//    applied in integer arithmetic), with int16 sums per 16 and per 32 for offsets and mins.
//   [qs: n int8][d: n/32 f32][sum16: n/16 i32][qk: n int8][dk: n/256 f32][bk16: n/16 i16][bk32: n/32 i16]
static inline size_t act_bytes(int n) {
    return (size_t)n + (size_t)(n / 32) * 4 + (size_t)(n / 16) * 4 +
           (size_t)n + (size_t)(n / 256) * 4 + (size_t)(n / 16) * 2 + (size_t)(n / 32) * 2;
}
struct ActView {
    const int8_t* qs;
    const float* d;
    const int32_t* sum16;
    const int8_t* qk;
    const float* dk;
    const int16_t* bk16;
    const int16_t* bk32;
};
static inline ActView act_view(const void* base, int n) {
    const uint8_t* p = (const uint8_t*)base;
    ActView v;
    v.qs = (const int8_t*)p;
    v.d = (const float*)(p + n);
    v.sum16 = (const int32_t*)(p + n + (n / 32) * 4);
    const uint8_t* k = p + n + (n / 32) * 4 + (n / 16) * 4;
    v.qk = (const int8_t*)k;
    v.dk = (const float*)(k + n);
    v.bk16 = (const int16_t*)(k + n + (n / 256) * 4);
    v.bk32 = (const int16_t*)(k + n + (n / 256) * 4 + (n / 16) * 2);
    return v;
}
// The Q4_K/Q5_K kernels that take a call's blocks in address order, in groups that may span rows
// of U units of 256 (kq45_groups.h, kernels_avx2.cpp's qk45_pairs): per unit j < U + extra, unit
// j % U's 8 activation sums of 32 (int16, the returned pointer) and its scale d_a (*dk), so that a
// group starting at any unit reads its units side by side. Null when U < 1 or out of memory.
static inline int16_t* repeated_units(ScratchBuffer& buf, const ActView& a, int U, int extra, float** dk) {
    int16_t* bk = U > 0 ? (int16_t*)buf.reserve((size_t)(U + extra) * 20) : nullptr;
    if (!bk) return nullptr;
    *dk = (float*)(bk + 8 * (U + extra));
    for (int j = 0; j < U + extra; j++) {
        (*dk)[j] = a.dk[j % U];
        memcpy(bk + 8 * j, a.bk32 + 8 * (j % U), 16);
    }
    return bk;
}

// The kernels' signatures (kernels.h lists them per ISA; dispatch.cpp chooses).
// A rows kernel: out[t * out_stride + r] = dot(row r of W, activation t) for r < k, t < ntok, for
// the k rows it takes from the front of the range (all, its whole tiles, or none: 0), returned.
// acts[t] points at a float row (F32/F16/BF16 weights) or at a quantised activation (others).
typedef int (*RowsFn)(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok,
                      int n, float* out, size_t out_stride);
// Writes an ISA's activation layout, act_bytes(n) long; every layout starts with the portable one
// above, so a kernel of a lower ISA may read any table's activations.
typedef void (*QuantizeFn)(const float* x, int n, void* act);
typedef size_t (*ActBytesFn)(int n);
typedef void (*SiluMulFn)(float* g, const float* u, int n);  // g = silu(g) * u
// A KV cache's elements (GqaArgs::cache_type, AttendFn's cache_type)
enum CacheType { kCacheF32 = 0, kCacheF16 = 1, kCacheBF16 = 2 };
static inline int cache_elem_bytes(int cache_type) { return cache_type == kCacheF32 ? 4 : 2; }
// A run of n cached positions whose rows lie `stride` elements apart from k and from v.
struct AttnPiece {
    const void *k, *v;
    int n;
};
// Attention of a token's N query heads q [N][d] (per_group of them per kv head) over the S
// positions of `count` pieces (rows of a CacheType; kv head g at g * d in a row): per head the
// score maximum m, sum of exp(score - m) l and unnormalised output out [N][d] of those positions
// (attention.cpp merges calls). ahead_lines: how far ahead of its reads the kernel prefetches the
// rows, in cache lines (0: none). 0 for a head width d or cache type the kernel does not take.
// scratch: (N + 2 * G * d) * S floats, G = N / per_group.
typedef int (*AttendFn)(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int cache_type,
                        int64_t stride, float scale, float* out, float* m, float* l, float* scratch, int ahead_lines);
typedef uint64_t (*ReadFn)(const uint8_t* p, int64_t bytes);  // streams bytes (bandwidth probe)
typedef void (*ToF16Fn)(const float* x, int n, uint16_t* out);  // f32_to_fp16 of n values (the fp16 KV cache)

enum { FMT_SLOTS = 40 };
static inline bool fmt_is_float(int f) { return f == F32 || f == F16 || f == BF16; }

void quantize_portable(const float* x, int n, void* act);  // the portable activation layout
void quantize_k_portable(const float* x, int n, void* act);  // only its per-256 part

// 1 where the CPU has AVX512 and runs its 512-bit instructions as two 256-bit halves (AMD family 25:
// Zen 4), else 0 (cpu.cpp)
int detect_split_512();
// 1 where the CPU has AVX512 with 512-bit wide units (Zen 5, Intel), else 0 (cpu.cpp)
int detect_full_512();

// The values that fit the kernels to a machine, as production runs them (measured on Zen 4 unless a
// value says otherwise; those that differ by CPU follow detect_split_512 / detect_full_512). Only
// benchmarks change them (hymoe_bench_tune: `hymoe bench experts --tune name=value`), to compare
// values in one process; dispatch.cpp holds the instance.
struct Tuning {
    // AVX512 per-row kernels: bytes a row stream fetches ahead of the block it reads (rounded up to
    // whole passes of rows, simd_avx512.h): enough lines in flight to cover DRAM latency.
    int prefetch_bytes = 8192;
    // Rows per MoE work unit at most, when each expert has one token block: large units stream long
    // contiguous ranges (Q8_0 at batch 1, Qwen3 shape: 0.77 of bandwidth at 512 rows, 0.71 at 64).
    int gate_rows = 512, down_rows = 512;
    // Tokens per call from which a batch tile takes a call instead of the per-row kernels: the
    // tile's repacking is shared by the call's tokens, so it pays from a few of them on.
    int avx512_tile_from = 6;     // AVX512's per-row kernels already reuse a row for 4 tokens
    int avx2_tile_from = 2;       // AVX2's per-row kernels take one row and one token at a time
    int avx2_q8_0_tile_from = 4;  // AVX2's Q8_0 per-row kernel is leaner than the others'
    int float_tile_from = 2;      // the f32 tile (kernels_avx2_float.cpp)
    int bf16_tile_from = 2;       // the vdpbf16ps tile (kernels_avx512_bf16.cpp)
    // Decode attention: chunks of a token's positions per pool thread (attention.cpp). Fewer chunks
    // merge less and give the prefetch stream longer runs (Qwen3 file, 512 positions, 2 threads,
    // Zen 5, settings alternating in one process: attention 0.76 ms a step at 1 chunk, 0.85 at 2)
    int attn_chunks = 1;
    // Decode attention: cache lines the attend kernel's prefetch stream runs ahead of its reads
    // (attend.h RowStream; 0: none). As above: 0 lines 1.47 ms, 128 1.06, 256 0.90, 512 0.88
    int attn_ahead = 256;
    // Decode attention: that stream fetches into L2 (prefetcht1), not L1 (prefetcht0). Zen 4, decode
    // steps on a busy bus (~20 ms): attention stage 2.78 -> 2.23 and 3.29 -> 2.56 ms, steps 0.978
    // and 0.961; on a quiet one (~15 ms) 0.987 (docs/dense.md)
    int attn_to_l2 = 1;
    // Attention: positions one attend call takes at most; a chunk's calls are merged. Its scores
    // (heads x positions floats) stay in L2
    int attn_call_rows = 1024;
    // Q4_K and Q5_K at one token: blocks in groups of 4 (kq45_groups.h; on AVX2 pairs, qk45_pairs in
    // kernels_avx2.cpp); 0 takes the per-row kernels. Not where AVX512's units are full width: Zen 5
    // decode steps alternating in one process, groups against rows 1.06 and 1.11 (every weight stage
    // ~10% slower; the groups compute faster in cache but stream slower, docs/dense.md)
    int kq45_groups = !detect_full_512();
    // Q4_K's groups on the activations' lanes copy (lanes_dot in kq45_groups.h); 0: the paired copy,
    // as Q5_K (Zen 4: 16.1 -> 14.7 cycles a block in cache; decode steps 0.994 on a quiet bus)
    int kq4_lanes = 1;
    // Q4_K weights the AVX512 kernels stream regrouped at load (Q4_K_G4, regroup.cpp; read when a
    // model is placed, so an A/B loads it twice), where the CPU splits 512-bit instructions: the
    // one-token kernel is compute-bound there. Decode steps, the file loaded both ways in one process
    // (docs/dense.md): Zen 4 0.962-0.998; Zen 5 (full-width units) 1.010-1.055, its expert stage 4-7%
    // slower although the kernel computes 8% faster in cache there too (cause not found)
    int regroup_q4_k = detect_split_512();
    // Decode attention on AVX512: 8-float vectors instead of 16 (kernels_avx512_attn.cpp), where the
    // CPU runs 512-bit instructions as two 256-bit halves (detect_split_512)
    int attn_ymm = detect_split_512();
    // Dense linears' units as one contiguous range of rows a thread, the rest of the others' taken
    // when its own are done (Pool::parallel_for's by_thread), not each unit from one shared counter:
    // a thread's next unit is then known, and its prefetches run on into it. Zen 4, decode steps
    // (q/k/v 2.61 -> 2.44 ms, output 2.19 -> 2.05): 0.952 on a quiet bus, 0.993 on a busy one
    int linear_by_thread = 1;
    // The MoE job's gate/up and down units the same way (one node): 0.970 on a quiet bus, 0.997
    // on a busy one (decode steps, after linear_by_thread)
    int moe_by_thread = 1;
    // The MoE job at one token as one phase of whole experts, where each thread has 4 or more
    // (Job::run_one_token in moe.cpp). Zen 5, decode steps alternating in one process: 0.973 (probe
    // 53 GB/s, expert stage 6.36-6.53 -> 6.23 ms) and 0.983 (probe 52, 7.92-7.97 -> 7.74)
    int moe_one_phase = 1;
};
extern Tuning g_tuning;

// A per-row kernel (RowsFn) from a dot product of one row with one activation: every row against
// every token, one at a time (the portable kernels, and SIMD ones that vectorize along k only).
template <float (*Dot)(const uint8_t*, const void*, int)>
int rows_by_dot(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                float* out, size_t out_stride) {
    for (int r = 0; r < nrows; r++)
        for (int t = 0; t < ntok; t++) out[t * out_stride + r] = Dot(w + r * row_bytes, acts[t], n);
    return nrows;
}
