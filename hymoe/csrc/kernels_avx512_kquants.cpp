// AVX512 per-row kernels of Q2_K, Q3_K, IQ4_XS (lowbit.h): a format's own F struct (rows_avx512.h) where one
// is written, else the generic kernel over its decoder. Compiled with the AVX512 flags only; no C++
// library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_kquants.h"
#include "rows_avx512.h"

namespace {

}  // namespace

const RowsFn avx512::rows_q2_k = lowbit_rows<DQ2_K>();
const RowsFn avx512::rows_q3_k = lowbit_rows<DQ3_K>();
const RowsFn avx512::rows_iq4_xs = lowbit_rows<DIQ4_XS>();
#endif
