// Which kernel computes what on each ISA: the one place that chooses (the kernel files only
// export their kernels, kernels.h). A level per ISA, read top to bottom:
//
//   portable -> avx2 -> avx512 -> avx512_bf16      (x86-64)
//   portable -> neon-dotprod                     (aarch64)
//
// Each level lists, per weight format, the kernels it brings: a per-row kernel (each row against
// each token, SIMD along k: decode) and a batch tile (rows repacked once into a tile that all of a
// call's tokens share), which takes calls from `tile_from` tokens on. At run time the levels up to
// the CPU's are stacked, the highest on top. A call goes to the top level's tile (given enough
// tokens), then to its per-row kernel; each takes the rows it can from the front (a tile: its whole
// tiles; either: none, for a shape it does not take). What they leave, and every format a level
// does not list, goes to the level below, down to the portable kernels, which take every shape.
//
// For example Q4_K on AVX2: at batch 1, avx2::rows_q4_k; at batch 64, avx2::tile_q4_k for the whole
// tiles of 16 rows and avx2::rows_q4_k for the rows left over.
#include "dispatch.h"

#include "kernels.h"

int detect_isa();
bool detect_avx512_bf16();

Tuning g_tuning;

namespace {

struct FormatKernels {
    int fmt;
    RowsFn rows;             // the per-row kernel, or null
    RowsFn tile;             // the batch tile, or null
    int Tuning::*tile_from;  // tokens per call from which the tile takes a call
};

// ---- portable: plain C++ (kernels_generic.cpp), for every CPU -----------------------------------
const FormatKernels kPortable[] = {
    // format  per-row kernel
    {F32,      portable::rows_f32},
    {F16,      portable::rows_f16},
    {BF16,     portable::rows_bf16},
    {Q8_0,     portable::rows_q8_0},
    {Q4_0,     portable::rows_q4_0},
    {Q4_K,     portable::rows_q4_k},
    {Q4_K_G4,  portable::rows_q4_k_g4},
    {Q5_K,     portable::rows_q5_k},
    {Q6_K,     portable::rows_q6_k},
    {IQ1_S,    portable::rows_iq1_s},
    {TQ2_0,    portable::rows_tq2_0},
    {TQ1_0,    portable::rows_tq1_0},
    // the low-bit and older formats (lowbit.h; kernels_generic_lowbit.cpp)
    {Q4_1,     portable::rows_q4_1},
    {Q5_0,     portable::rows_q5_0},
    {Q5_1,     portable::rows_q5_1},
    {IQ4_NL,   portable::rows_iq4_nl},
    {Q2_K,     portable::rows_q2_k},
    {Q3_K,     portable::rows_q3_k},
    {IQ4_XS,   portable::rows_iq4_xs},
    {IQ2_XXS,  portable::rows_iq2_xxs},
    {IQ2_XS,   portable::rows_iq2_xs},
    {IQ2_S,    portable::rows_iq2_s},
    {IQ3_XXS,  portable::rows_iq3_xxs},
    {IQ3_S,    portable::rows_iq3_s},
    {IQ1_M,    portable::rows_iq1_m},
};

#if defined(__x86_64__) || defined(_M_X64)
// ---- AVX2 + FMA + F16C (Haswell and later, Zen 1-3) ---------------------------------------------
const FormatKernels kAvx2[] = {
    // format  per-row kernel     batch tile          from tokens
    {F32,      avx2::rows_f32,    avx2::tile_f32,     &Tuning::float_tile_from},
    {F16,      avx2::rows_f16,    avx2::tile_f16,     &Tuning::float_tile_from},
    {BF16,     avx2::rows_bf16,   avx2::tile_bf16,    &Tuning::float_tile_from},
    {Q8_0,     avx2::rows_q8_0,   avx2::tile_q8_0,    &Tuning::avx2_q8_0_tile_from},
    {Q4_0,     avx2::rows_q4_0,   avx2::tile_q4_0,    &Tuning::avx2_tile_from},
    {Q4_K,     avx2::rows_q4_k,   avx2::tile_q4_k,    &Tuning::avx2_tile_from},
    {Q5_K,     avx2::rows_q5_k,   avx2::tile_q5_k,    &Tuning::avx2_tile_from},
    {Q6_K,     avx2::rows_q6_k,   avx2::tile_q6_k,    &Tuning::avx2_tile_from},
    {IQ1_S,    avx2::rows_iq1_s,  avx2::tile_iq1_s,   &Tuning::avx2_tile_from},
    {TQ2_0,    avx2::rows_tq2_0,  avx2::tile_tq2_0,   &Tuning::avx2_tile_from},
    {TQ1_0,    avx2::rows_tq1_0,  avx2::tile_tq1_0,   &Tuning::avx2_tile_from},
    {Q4_1,     avx2::rows_q4_1,    avx2::tile_q4_1,    &Tuning::avx2_tile_from},
    {Q5_0,     avx2::rows_q5_0,    avx2::tile_q5_0,    &Tuning::avx2_tile_from},
    {Q5_1,     avx2::rows_q5_1,    avx2::tile_q5_1,    &Tuning::avx2_tile_from},
    {IQ4_NL,   avx2::rows_iq4_nl,  avx2::tile_iq4_nl,  &Tuning::avx2_tile_from},
    {Q2_K,     avx2::rows_q2_k,    avx2::tile_q2_k,    &Tuning::avx2_tile_from},
    {Q3_K,     avx2::rows_q3_k,    avx2::tile_q3_k,    &Tuning::avx2_tile_from},
    {IQ4_XS,   avx2::rows_iq4_xs,  avx2::tile_iq4_xs,  &Tuning::avx2_tile_from},
    {IQ2_XXS,  avx2::rows_iq2_xxs,  avx2::tile_iq2_xxs,  &Tuning::avx2_tile_from},
    {IQ2_XS,   avx2::rows_iq2_xs,  avx2::tile_iq2_xs,  &Tuning::avx2_tile_from},
    {IQ2_S,    avx2::rows_iq2_s,   avx2::tile_iq2_s,   &Tuning::avx2_tile_from},
    {IQ3_XXS,  avx2::rows_iq3_xxs,  avx2::tile_iq3_xxs,  &Tuning::avx2_tile_from},
    {IQ3_S,    avx2::rows_iq3_s,   avx2::tile_iq3_s,   &Tuning::avx2_tile_from},
    {IQ1_M,    avx2::rows_iq1_m,   avx2::tile_iq1_m,   &Tuning::avx2_tile_from},
};

// ---- AVX512 F/BW/VL + VNNI (Cascade Lake and later, Zen 4) --------------------------------------
// Float batches keep AVX2's f32 tile: it converts each weight once per call, where these per-row
// kernels convert it once per token.
const FormatKernels kAvx512[] = {
    // format  per-row kernel       batch tile           from tokens
    {F32,      avx512::rows_f32,    avx2::tile_f32,      &Tuning::float_tile_from},
    {F16,      avx512::rows_f16,    avx2::tile_f16,      &Tuning::float_tile_from},
    {BF16,     avx512::rows_bf16,   avx2::tile_bf16,     &Tuning::float_tile_from},
    {Q8_0,     avx512::rows_q8_0,   avx512::tile_q8_0,   &Tuning::avx512_tile_from},
    {Q4_0,     avx512::rows_q4_0,   avx512::tile_q4_0,   &Tuning::avx512_tile_from},
    {Q4_K,     avx512::rows_q4_k,   avx512::tile_q4_k,   &Tuning::avx512_tile_from},
    {Q4_K_G4,  avx512::rows_q4_k_g4, avx512::tile_q4_k_g4, &Tuning::avx512_tile_from},
    {Q5_K,     avx512::rows_q5_k,   avx512::tile_q5_k,   &Tuning::avx512_tile_from},
    {Q6_K,     avx512::rows_q6_k,   avx512::tile_q6_k,   &Tuning::avx512_tile_from},
    {IQ1_S,    avx512::rows_iq1_s,  avx512::tile_iq1_s,  &Tuning::avx512_tile_from},
    {TQ2_0,    avx512::rows_tq2_0,  avx512::tile_tq2_0,  &Tuning::avx512_tile_from},
    {TQ1_0,    avx512::rows_tq1_0,  avx512::tile_tq1_0,  &Tuning::avx512_tile_from},
    {Q4_1,     avx512::rows_q4_1,    avx512::tile_q4_1,    &Tuning::avx512_tile_from},
    {Q5_0,     avx512::rows_q5_0,    avx512::tile_q5_0,    &Tuning::avx512_tile_from},
    {Q5_1,     avx512::rows_q5_1,    avx512::tile_q5_1,    &Tuning::avx512_tile_from},
    {IQ4_NL,   avx512::rows_iq4_nl,  avx512::tile_iq4_nl,  &Tuning::avx512_tile_from},
    {Q2_K,     avx512::rows_q2_k,    avx512::tile_q2_k,    &Tuning::avx512_tile_from},
    {Q3_K,     avx512::rows_q3_k,    avx512::tile_q3_k,    &Tuning::avx512_tile_from},
    {IQ4_XS,   avx512::rows_iq4_xs,  avx512::tile_iq4_xs,  &Tuning::avx512_tile_from},
    {IQ2_XXS,  avx512::rows_iq2_xxs,  avx512::tile_iq2_xxs,  &Tuning::avx512_tile_from},
    {IQ2_XS,   avx512::rows_iq2_xs,  avx512::tile_iq2_xs,  &Tuning::avx512_tile_from},
    {IQ2_S,    avx512::rows_iq2_s,   avx512::tile_iq2_s,   &Tuning::avx512_tile_from},
    {IQ3_XXS,  avx512::rows_iq3_xxs,  avx512::tile_iq3_xxs,  &Tuning::avx512_tile_from},
    {IQ3_S,    avx512::rows_iq3_s,   avx512::tile_iq3_s,   &Tuning::avx512_tile_from},
    {IQ1_M,    avx512::rows_iq1_m,   avx512::tile_iq1_m,   &Tuning::avx512_tile_from},
};

// ---- AVX512-BF16 on top of AVX512 (Cooper Lake, Sapphire Rapids, Zen 4) -------------------------
// BF16 batches by vdpbf16ps; the calls it does not take (over 64 tokens, rows not of 32s) go on
// to the f32 tile below.
const FormatKernels kAvx512Bf16[] = {
    // format  per-row kernel  batch tile              from tokens
    {BF16,     nullptr,        avx512_bf16::tile_bf16, &Tuning::bf16_tile_from},
};
#endif

#if defined(__aarch64__)
// ---- NEON + dot product (armv8.2-a+dotprod: Neoverse, Apple M, Graviton 2+) ---------------------
const FormatKernels kNeonDot[] = {
    // format  per-row kernel
    {Q8_0,     neon::rows_q8_0},
    {Q4_0,     neon::rows_q4_0},
    {Q4_K,     neon::rows_q4_k},
    {Q5_K,     neon::rows_q5_k},
    {Q6_K,     neon::rows_q6_k},
    {IQ1_S,    neon::rows_iq1_s},
};
#endif

// A level's kernels, and the rest of what it changes (null: the level below's).
struct Level {
    const char* name;  // hymoe_isa_name() with this level on top
    const FormatKernels* formats;
    int num_formats;
    AttendFn attend;
    QuantizeFn quantize;  // writes the activation layout that act_bytes sizes
    ActBytesFn act_bytes;
    SiluMulFn silu_mul;
    ReadFn read;
    ToF16Fn to_f16;
};
#define FORMATS(table) table, (int)(sizeof(table) / sizeof(table[0]))
const Level kPortableLevel = {"generic", FORMATS(kPortable), portable::attend, quantize_portable, act_bytes,
                              portable::silu_mul, portable::read, portable::to_f16};
#if defined(__x86_64__) || defined(_M_X64)
const Level kAvx2Level = {"avx2", FORMATS(kAvx2), avx2::attend, nullptr, nullptr, nullptr, nullptr, avx2::to_f16};
const Level kAvx512Level = {"avx512-vnni", FORMATS(kAvx512), avx512::attend, avx512::quantize, avx512::act_bytes,
                            avx512::silu_mul, avx512::read};
const Level kAvx512Bf16Level = {"avx512-vnni-bf16", FORMATS(kAvx512Bf16)};
#endif
#if defined(__aarch64__)
const Level kNeonDotLevel = {"neon-dotprod", FORMATS(kNeonDot)};
#endif
#undef FORMATS

// Puts a level's steps in front of a format's list (null-terminated), so they are tried first.
void push_front(RowsStep* list, const RowsStep* add, int n) {
    int len = 0;
    while (list[len].fn) len++;
    if (len + n >= kMaxSteps) abort();  // more levels than kMaxSteps allows
    for (int i = len; i >= 0; i--) list[i + n] = list[i];
    for (int i = 0; i < n; i++) list[i] = add[i];
}

void stack(KernelTable& t, const Level& level) {
    t.name = level.name;
    if (level.quantize) t.quantize = level.quantize, t.act_bytes = level.act_bytes;
    if (level.silu_mul) t.silu_mul = level.silu_mul;
    if (level.read) t.read = level.read;
    if (level.to_f16) t.to_f16 = level.to_f16;
    if (level.attend) {  // in front of the narrower ISAs' kernels
        const int cap = sizeof(t.attend) / sizeof(t.attend[0]);
        if (t.attend[cap - 2]) abort();  // no room left for the terminating null
        for (int i = cap - 1; i > 0; i--) t.attend[i] = t.attend[i - 1];
        t.attend[0] = level.attend;
    }
    for (int i = 0; i < level.num_formats; i++) {
        const FormatKernels& f = level.formats[i];
        RowsStep add[2];
        int n = 0;
        if (f.tile) add[n++] = RowsStep{f.tile, g_tuning.*f.tile_from};
        if (f.rows) add[n++] = RowsStep{f.rows, 0};
        push_front(t.rows[f.fmt], add, n);
    }
}

struct Dispatch {
    KernelTable table;
    int isa = 0, forced = -1;
    Dispatch() { select(-1); }
    // The levels up to the CPU's, or up to `forced_isa` (0 portable, 1 avx2, 2 avx512) if lower.
    void select(int forced_isa) {
        forced = forced_isa;
        const int hw = detect_isa();
        isa = forced >= 0 && forced < hw ? forced : hw;
        KernelTable t;
        memset(&t, 0, sizeof(t));
        stack(t, kPortableLevel);
#if defined(__x86_64__) || defined(_M_X64)
        if (isa >= 1) stack(t, kAvx2Level);
        if (isa >= 2) stack(t, kAvx512Level);
        if (isa >= 2 && detect_avx512_bf16() && avx512_bf16::tile_bf16) stack(t, kAvx512Bf16Level);
#endif
#if defined(__aarch64__)
        if (isa >= 1) stack(t, kNeonDotLevel);
#endif
        table = t;
    }
};
Dispatch& dispatch() {
    static Dispatch d;
    return d;
}

}  // namespace

const KernelTable& kernels() { return dispatch().table; }

extern "C" {

__attribute__((visibility("default"))) int hymoe_isa() { return dispatch().isa; }
__attribute__((visibility("default"))) const char* hymoe_isa_name() { return kernels().name; }
__attribute__((visibility("default"))) void hymoe_force_isa(int isa) { dispatch().select(isa); }
__attribute__((visibility("default"))) int hymoe_has_format(int fmt) { return has_format(kernels(), fmt); }

// Benchmarks only (`hymoe bench experts --tune`, scripts/kernel_ab.py): sets one Tuning value
// (common.h) by name for this process and restacks the table; a negative value only reads it.
// Returns the value it had, or -1 for a name it does not know.
__attribute__((visibility("default"))) int hymoe_bench_tune(const char* name, int value) {
    static const struct {
        const char* name;
        int Tuning::*field;
    } kFields[] = {
        {"prefetch_bytes", &Tuning::prefetch_bytes},   {"gate_rows", &Tuning::gate_rows},
        {"down_rows", &Tuning::down_rows},             {"avx512_tile_from", &Tuning::avx512_tile_from},
        {"avx2_tile_from", &Tuning::avx2_tile_from},   {"avx2_q8_0_tile_from", &Tuning::avx2_q8_0_tile_from},
        {"float_tile_from", &Tuning::float_tile_from}, {"bf16_tile_from", &Tuning::bf16_tile_from},
        {"attn_chunks", &Tuning::attn_chunks},         {"attn_ahead", &Tuning::attn_ahead},
        {"attn_call_rows", &Tuning::attn_call_rows},  {"kq45_groups", &Tuning::kq45_groups}, {"kq4_lanes", &Tuning::kq4_lanes},
        {"attn_ymm", &Tuning::attn_ymm},   {"attn_to_l2", &Tuning::attn_to_l2}, {"linear_by_thread", &Tuning::linear_by_thread}, {"moe_by_thread", &Tuning::moe_by_thread},
        {"regroup_q4_k", &Tuning::regroup_q4_k}, {"moe_one_phase", &Tuning::moe_one_phase},
    };
    for (const auto& f : kFields) {
        if (strcmp(f.name, name) != 0) continue;
        const int old = g_tuning.*f.field;
        if (value >= 0) {
            g_tuning.*f.field = value;
            dispatch().select(dispatch().forced);
        }
        return old;
    }
    return -1;
}

}  // extern "C"
