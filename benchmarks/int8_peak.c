/* Peak int8 multiply-accumulate throughput of this CPU: a register-only loop of independent chains.
 *
 * Compiled and run by benchmarks/gemm.py at run time (gcc -O2 -fopenmp), so the peak is measured on
 * whatever machine runs the benchmark. Usage: int8_peak ISA ITERATIONS THREADS
 *
 *   vnni512  vpdpbusd zmm (AVX-512 VNNI): 12 chains x 64 u8*s8 MACs per instruction
 *   avx2     vpmaddubsw + vpmaddwd + vpaddd ymm (the AVX2 int8 path): 6 chains x 32 MACs per triple.
 *            vpmaddubsw adds adjacent u8*s8 products into int16 WITH SATURATION, so this path is exact
 *            only when a pair of products fits int16 (not for full-range u8 x s8); it is still the
 *            fastest int8 instruction sequence AVX2 has, which is what a peak needs.
 *
 * Each thread runs the loop on its own registers; no memory is touched inside the loop. One MAC is
 * counted as 2 ops. Prints one line: isa threads iterations ops seconds.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHAINS_AVX2 6
#define CHAINS_VNNI512 12

static void loop_avx2(long n) {
    __asm__ volatile(
        "vpcmpeqd %%ymm15, %%ymm15, %%ymm15\n\t"  /* all ones */
        "vpsrlw $15, %%ymm15, %%ymm14\n\t"         /* int16 1 in every word: vpmaddwd by 1 = pairwise add */
        "vpabsb %%ymm15, %%ymm12\n\t"              /* u8 operand: 1 */
        "vpsubb %%ymm12, %%ymm12, %%ymm13\n\t"     /* s8 operand: 0 (values do not change the speed) */
        "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
        "vpxor %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpxor %%ymm2, %%ymm2, %%ymm2\n\t"
        "vpxor %%ymm3, %%ymm3, %%ymm3\n\t"
        "vpxor %%ymm4, %%ymm4, %%ymm4\n\t"
        "vpxor %%ymm5, %%ymm5, %%ymm5\n\t"
        "1:\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm6\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm7\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm8\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm9\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm10\n\t"
        "vpmaddubsw %%ymm13, %%ymm12, %%ymm11\n\t"
        "vpmaddwd %%ymm14, %%ymm6, %%ymm6\n\t"
        "vpmaddwd %%ymm14, %%ymm7, %%ymm7\n\t"
        "vpmaddwd %%ymm14, %%ymm8, %%ymm8\n\t"
        "vpmaddwd %%ymm14, %%ymm9, %%ymm9\n\t"
        "vpmaddwd %%ymm14, %%ymm10, %%ymm10\n\t"
        "vpmaddwd %%ymm14, %%ymm11, %%ymm11\n\t"
        "vpaddd %%ymm6, %%ymm0, %%ymm0\n\t"
        "vpaddd %%ymm7, %%ymm1, %%ymm1\n\t"
        "vpaddd %%ymm8, %%ymm2, %%ymm2\n\t"
        "vpaddd %%ymm9, %%ymm3, %%ymm3\n\t"
        "vpaddd %%ymm10, %%ymm4, %%ymm4\n\t"
        "vpaddd %%ymm11, %%ymm5, %%ymm5\n\t"
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
          "xmm12", "xmm13", "xmm14", "xmm15", "cc");
}

#ifdef WITH_VNNI512
static void loop_vnni512(long n) {
    __asm__ volatile(
        "vpternlogd $0xff, %%zmm12, %%zmm12, %%zmm12\n\t"
        "vpabsb %%zmm12, %%zmm12\n\t"              /* u8 operand: 1 */
        "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"     /* s8 operand: 0 */
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
        "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
        "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
        "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
        "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
        "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
        "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
        "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
        "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
        "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
        "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
        "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
        "1:\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm0\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm1\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm2\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm3\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm4\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm5\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm6\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm7\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm8\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm9\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm10\n\t"
        "vpdpbusd %%zmm13, %%zmm12, %%zmm11\n\t"
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
          "xmm12", "xmm13", "cc");
}
#endif

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s avx2|vnni512 ITERATIONS THREADS\n", argv[0]);
        return 2;
    }
    const char *isa = argv[1];
    long iters = atol(argv[2]);
    int threads = atoi(argv[3]);
    void (*loop)(long) = NULL;
    double ops_per_iter = 0;
    if (strcmp(isa, "avx2") == 0) {
        loop = loop_avx2;
        ops_per_iter = 2.0 * CHAINS_AVX2 * 32;
    }
#ifdef WITH_VNNI512
    if (strcmp(isa, "vnni512") == 0) {
        loop = loop_vnni512;
        ops_per_iter = 2.0 * CHAINS_VNNI512 * 64;
    }
#endif
    if (loop == NULL || iters < 1 || threads < 1) {
        fprintf(stderr, "unsupported isa '%s' (not compiled in) or bad arguments\n", isa);
        return 2;
    }
    loop(1000); /* wake the vector unit up (AVX frequency licence, power gating) */
    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
    loop(iters);
    double t1 = omp_get_wtime();
    printf("%s %d %ld %.0f %.9f\n", isa, threads, iters, ops_per_iter * (double)iters * threads, t1 - t0);
    return 0;
}
