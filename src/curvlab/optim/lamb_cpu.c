/* One LAMB step on the CPU, two passes over each tensor (You et al., ICLR 2020, Algorithm 2).
 *
 * Pass 1 reads x, g, m, v once, writes m_t and v_t, keeps u = r_t + lambda * x_t in a
 * tensor-sized scratch buffer and sums ||x||^2 and ||u||^2. Pass 2 writes
 * x_{t+1} = x_t - eta * trust_ratio * u from x and the scratch buffer, which for all but the
 * largest tensors is still in cache. That is the least memory traffic a LAMB step can have, and
 * one call covers every tensor of a group, where the multi-tensor PyTorch path pays one
 * dispatch per operation per tensor.
 *
 * Built by curvlab.optim.lamb_cpu with the system C compiler and called through ctypes; the
 * functions take arrays of data pointers, one entry per tensor, all contiguous.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double beta1, beta2, eps, weight_decay, lr;
    double phi_min, phi_max; /* -inf / inf when unbounded */
    int32_t trust_clip;      /* LAMBC: cap the trust ratio at 1 */
} lamb_args;

/* Sums of squares are accumulated per block in the tensor's type, then in double. */
#define LAMB_BLOCK 1024

#define DEFINE_LAMB(T, SQRT, SUFFIX)                                                              \
    __attribute__((target_clones("avx2", "default"))) static void lamb_tensor_##SUFFIX(           \
        T *restrict x, const T *restrict g, T *restrict m, T *restrict v, T *restrict u,          \
        float *restrict step, int64_t n, const lamb_args *a, const T *grad_scale) {               \
        /* t is kept on the tensor like Adam's state["step"]; bias corrections from it. */        \
        *step += 1.0f;                                                                            \
        const double t = (double)*step;                                                           \
        /* 1 - beta in double: 1 - 0.999f in float is 1.3e-5 off 0.001. */                        \
        const T b2 = (T)a->beta2;                                                                 \
        const T one_minus_b1 = (T)(1.0 - a->beta1), one_minus_b2 = (T)(1.0 - a->beta2);           \
        const T inv_bc1 = (T)(1.0 / (1.0 - pow(a->beta1, t)));                                    \
        const T inv_sqrt_bc2 = (T)(1.0 / sqrt(1.0 - pow(a->beta2, t)));                           \
        const T eps = (T)a->eps, wd = (T)a->weight_decay;                                         \
        const T scale = grad_scale ? *grad_scale : (T)1;                                          \
        double x_sq = 0.0, u_sq = 0.0;                                                            \
                                                                                                  \
        /* m_t, v_t, r_t = m_hat / (sqrt(v_hat) + eps), u = r_t + lambda * x_t */                 \
        for (int64_t start = 0; start < n; start += LAMB_BLOCK) {                                 \
            const int64_t end = start + LAMB_BLOCK < n ? start + LAMB_BLOCK : n;                  \
            T x_acc = 0, u_acc = 0;                                                               \
            _Pragma("omp simd reduction(+ : x_acc, u_acc)")                                       \
            for (int64_t i = start; i < end; i++) {                                               \
                const T gi = g[i] * scale;                                                        \
                const T mi = m[i] + one_minus_b1 * (gi - m[i]);                                   \
                const T vi = b2 * v[i] + one_minus_b2 * gi * gi;                                  \
                const T ui = (mi * inv_bc1) / (SQRT(vi) * inv_sqrt_bc2 + eps) + wd * x[i];        \
                m[i] = mi;                                                                        \
                v[i] = vi;                                                                        \
                u[i] = ui;                                                                        \
                x_acc += x[i] * x[i];                                                             \
                u_acc += ui * ui;                                                                 \
            }                                                                                     \
            x_sq += (double)x_acc;                                                                \
            u_sq += (double)u_acc;                                                                \
        }                                                                                         \
                                                                                                  \
        /* trust_ratio = phi(||x||) / ||u||, 1 where either norm is 0 */                          \
        const double x_norm = sqrt(x_sq), u_norm = sqrt(u_sq);                                    \
        double trust_ratio = 1.0;                                                                 \
        if (x_norm > 0.0 && u_norm > 0.0) {                                                       \
            const double phi = fmin(fmax(x_norm, a->phi_min), a->phi_max);                        \
            trust_ratio = phi / u_norm;                                                           \
            if (a->trust_clip && trust_ratio > 1.0) trust_ratio = 1.0;                            \
        }                                                                                         \
                                                                                                  \
        /* x_{t+1} = x_t - eta * trust_ratio * u */                                               \
        const T alpha = (T)(-a->lr * trust_ratio);                                                \
        for (int64_t i = 0; i < n; i++) x[i] += alpha * u[i];                                     \
    }                                                                                             \
                                                                                                  \
    void curvlab_lamb_step_##SUFFIX(int64_t count, T **x, T **g, T **m, T **v, float **step,      \
                                    const int64_t *numel, T *scratch, const lamb_args *a,         \
                                    const T *grad_scale) {                                        \
        for (int64_t k = 0; k < count; k++)                                                       \
            lamb_tensor_##SUFFIX(x[k], g[k], m[k], v[k], scratch, step[k], numel[k], a,           \
                                 grad_scale);                                                     \
    }

DEFINE_LAMB(float, sqrtf, f32)
DEFINE_LAMB(double, sqrt, f64)
