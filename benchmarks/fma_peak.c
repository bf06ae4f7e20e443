/* This CPU's float32 FMA ceiling: every thread runs ten independent chains of
 * 8-wide FMAs (AVX2) and nothing else, so the rate is what the FMA units can
 * do at the clock the run gets: the ceiling no matrix product or RNN passes.
 * A large sgemm is a floor, not the ceiling: MKL's sgemm runs at ~30% of this
 * on AMD CPUs. benchmarks/common.py (fma_peak_gflops) builds and runs it:
 *     cc -O2 -mavx2 -mfma -fopenmp fma_peak.c -o fma_peak && ./fma_peak
 * Prints the best of ten runs (a shared host has slow spells) in GFLOP/s (2 flops per FMA lane). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

int main(void) {
  const long iterations = 1000000000;  /* ~0.15 s a run at 2 threads */
  double best = 0;
  for (int run = 0; run < 10; ++run) {
    const double start = omp_get_wtime();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
      const __m256 scale = _mm256_set1_ps(0.999999f), shift = _mm256_set1_ps(1e-7f);
      /* Named variables, not an array: an array's chains are kept in memory. */
      __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3);
      __m256 a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7);
      __m256 a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9);
      for (long it = 0; it < iterations / 10; ++it) {
#define STEP(x) x = _mm256_fmadd_ps(x, scale, shift);
        STEP(a0) STEP(a1) STEP(a2) STEP(a3) STEP(a4) STEP(a5) STEP(a6) STEP(a7) STEP(a8) STEP(a9)
#undef STEP
      }
      __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
      sum = _mm256_add_ps(sum, _mm256_add_ps(a8, a9));
      float lanes[8];
      _mm256_storeu_ps(lanes, sum);
      sink += lanes[0];  /* keeps the chains live */
    }
    const double rate = (double)iterations * 16 * omp_get_max_threads() / (omp_get_wtime() - start) / 1e9;
    if (rate > best) best = rate;
    if (sink == 0.5f) printf("#");  /* never: the sum is used */
  }
  printf("%.1f\n", best);
  return 0;
}
