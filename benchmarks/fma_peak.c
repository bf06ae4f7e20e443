/* This CPU's float32 FMA ceiling: every thread runs ten independent chains of
 * FMAs of the widest vectors the build allows (16 floats with AVX-512, else 8
 * with AVX2) and nothing else, so the rate is what the FMA units can do at the
 * clock the run gets: the ceiling no matrix product or RNN passes. (An AVX2
 * ceiling on a CPU with full-width AVX-512 units, such as Zen 5, is half the
 * real one: the kernels there pass it.)
 * A large sgemm is a floor, not the ceiling: MKL's sgemm runs at ~30% of this
 * on AMD CPUs. benchmarks/common.py (fma_peak_gflops) builds and runs it:
 *     cc -O2 -mavx2 -mfma [-mavx512f] -fopenmp fma_peak.c -o fma_peak && ./fma_peak
 * Prints the best of ten runs (a shared host has slow spells) in GFLOP/s (2 flops per FMA lane). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STOREU _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STOREU _mm256_storeu_ps
#endif

int main(void) {
  const long iterations = 1000000000;  /* ~0.15 s a run at 2 threads */
  double best = 0;
  for (int run = 0; run < 10; ++run) {
    const double start = omp_get_wtime();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
      const vec scale = SET1(0.999999f), shift = SET1(1e-7f);
      /* Named variables, not an array: an array's chains are kept in memory. */
      vec a0 = SET1(0), a1 = SET1(1), a2 = SET1(2), a3 = SET1(3);
      vec a4 = SET1(4), a5 = SET1(5), a6 = SET1(6), a7 = SET1(7);
      vec a8 = SET1(8), a9 = SET1(9);
      for (long it = 0; it < iterations / 10; ++it) {
#define STEP(x) x = FMADD(x, scale, shift);
        STEP(a0) STEP(a1) STEP(a2) STEP(a3) STEP(a4) STEP(a5) STEP(a6) STEP(a7) STEP(a8) STEP(a9)
#undef STEP
      }
      vec sum = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
      sum = ADD(sum, ADD(a8, a9));
      float lanes[LANES];
      STOREU(lanes, sum);
      sink += lanes[0];  /* keeps the chains live */
    }
    const double rate = (double)iterations * 2 * LANES * omp_get_max_threads() / (omp_get_wtime() - start) / 1e9;
    if (rate > best) best = rate;
    if (sink == 0.5f) printf("#");  /* never: the sum is used */
  }
  printf("%.1f\n", best);
  return 0;
}
