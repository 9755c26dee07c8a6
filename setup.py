"""Builds hymoe's native CPU expert kernels (C++17, no libtorch) as one shared library.

Each ISA's kernels are compiled with their own flags and chosen at run time, so one build runs
on every x86-64 (and the portable path on ARM, LoongArch and the rest). If the compiler fails,
the install still succeeds with a warning and hymoe uses its torch expert backend.
"""
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# the low-bit formats (csrc/lowbit.h) in groups, each with AVX2 and portable decoders and, but for the
# K-quants (Q2_K, Q3_K, IQ4_XS: kernels_avx512_k.cpp, with Q4_K-Q6_K), its own AVX512 file
LOWBIT_GROUPS = ("legacy", "kquants", "iq2", "iq3")
AVX512_LOWBIT = ("legacy", "iq2", "iq3")
LOWBIT_HEADERS = ["", "_iq2_grids", "_iq3_grids", *(f"_{g}{p}" for g in LOWBIT_GROUPS for p in ("", "_scalar"))]
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")
BASE = ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-pthread", "-Wall", "-Wno-unused-function",
        "-Wno-maybe-uninitialized", "-Wno-uninitialized"]  # GCC 12 misreports its own AVX512 headers
ISA_FLAGS = {
    "kernels_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_avx512.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                           "-mavx512vnni", "-mavx512dq"],
}
ISA_FLAGS["kernels_avx512_k.cpp"] = ISA_FLAGS["kernels_avx512_tiled.cpp"] = ISA_FLAGS["kernels_avx512.cpp"]
ISA_FLAGS["kernels_avx512_attn.cpp"] = ISA_FLAGS["kernels_avx512.cpp"]
for g in AVX512_LOWBIT:
    ISA_FLAGS[f"kernels_avx512_{g}.cpp"] = ISA_FLAGS["kernels_avx512.cpp"]
ISA_FLAGS["kernels_avx2_tiled.cpp"] = ISA_FLAGS["kernels_avx2_float.cpp"] = ISA_FLAGS["kernels_avx2.cpp"]
ISA_FLAGS["kernels_avx2_attn.cpp"] = ISA_FLAGS["kernels_avx2_lowbit.cpp"] = ISA_FLAGS["kernels_avx2.cpp"]
ISA_FLAGS["kernels_avx512_bf16.cpp"] = ISA_FLAGS["kernels_avx512.cpp"] + ["-mavx512bf16"]
# built as a stub (-DHYMOE_NO_AVX512_BF16) by a compiler without AVX512-BF16 (GCC < 10): the other
# paths do not need it
# aarch64: the NEON file needs the dot-product extension (empty on x86, guarded by __aarch64__)
ARM_FLAGS = {"kernels_neon.cpp": ["-march=armv8.2-a+dotprod"]}
OPTIONAL = {"kernels_avx512_bf16.cpp": "-DHYMOE_NO_AVX512_BF16"}
SOURCES = ["dispatch.cpp", "moe.cpp", "numa.cpp", "linear.cpp", "attention.cpp", "dequant.cpp", "layer.cpp", "route.cpp", "regroup.cpp", "pool.cpp", "cpu.cpp", "kernels_generic.cpp", "kernels_avx2.cpp", "kernels_avx512.cpp",
           "kernels_avx512_k.cpp", "kernels_avx512_attn.cpp", "kernels_avx512_tiled.cpp", "kernels_avx2_tiled.cpp", "kernels_avx2_float.cpp", "kernels_avx2_attn.cpp",
           "kernels_avx512_bf16.cpp", "kernels_generic_lowbit.cpp", "kernels_avx2_lowbit.cpp", "kernels_neon.cpp",
           *(f"kernels_avx512_{g}.cpp" for g in AVX512_LOWBIT)]



class BuildKernels(build_ext):
    def _compile_one(self, src: str, depends: list) -> list:
        name = src.rsplit("/", 1)[-1]
        flags = ISA_FLAGS.get(name, []) if IS_X86 else ARM_FLAGS.get(name, []) if IS_ARM64 else []
        try:
            return self.compiler.compile([src], output_dir=self.build_temp, extra_postargs=BASE + flags, depends=depends)
        except Exception:
            if name not in OPTIONAL:
                raise
            print(f"WARNING: hymoe: {name} needs a newer compiler; built without it", file=sys.stderr)
            return self.compiler.compile([src], output_dir=self.build_temp, extra_postargs=BASE + [OPTIONAL[name]],
                                         depends=depends)

    def build_extension(self, ext):
        try:
            # one compiler process per core: the sources are independent, and a serial build took
            # about 3 minutes on 2 cores
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                parts = list(pool.map(lambda src: self._compile_one(src, ext.depends), ext.sources))
            objects = [o for part in parts for o in part]
            self.compiler.link_shared_object(objects, self.get_ext_fullpath(ext.name), extra_postargs=["-pthread"],
                                             target_lang="c++")
        except Exception as e:  # a missing or old compiler must not break the install
            msg = (f"WARNING: hymoe's native CPU kernels failed to build ({e}); "
                   "hymoe will compute routed experts with its slower torch backend.")
            print(msg, file=sys.stderr)
            self.warn(msg)


setup(
    ext_modules=[Extension("hymoe._kernels", [f"hymoe/csrc/{s}" for s in SOURCES],
                           depends=["hymoe/csrc/common.h", "hymoe/csrc/dispatch.h", "hymoe/csrc/kernels.h", "hymoe/csrc/linear.h", "hymoe/csrc/attention.h", "hymoe/csrc/attend.h", "hymoe/csrc/vec256.h", "hymoe/csrc/route.h", "hymoe/csrc/pool.h", "hymoe/csrc/numa.h", "hymoe/csrc/iq1s_grid.h", "hymoe/csrc/iq1s.h",
                                    "hymoe/csrc/simd_avx512.h", "hymoe/csrc/simd_avx2.h", "hymoe/csrc/tiles.h",
                                    "hymoe/csrc/k_scales.h", "hymoe/csrc/kq45_groups.h", "hymoe/csrc/rows_avx512.h", *(f"hymoe/csrc/lowbit{g}.h" for g in LOWBIT_HEADERS)])],
    cmdclass={"build_ext": BuildKernels},
)
