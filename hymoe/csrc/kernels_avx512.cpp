// AVX512 F/BW/VL + VNNI kernels (compiled with those flags only; chosen at run time).
#include "common.h"

void fill_avx512(KernelTable* t) { t->name = "avx512-vnni"; }
