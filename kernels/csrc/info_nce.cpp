// info_nce on CPU: InfoNCE over matched rows without the N x N logits, forward and backward in square tiles.
//
// The reference (reference.py: info_nce_ref) materialises the N x N logits, two log-softmaxes (one of them over
// a transposed, strided view) and, in autograd's backward, several more N x N buffers: at N = 8192 that is
// 256 MiB per matrix. Here the rows are L2-normalised once (fp32, or the input's precision if wider) and the
// logits are produced a (B x B) tile at a time by one GEMM (at::addmm_out with alpha = 1/T); each tile updates
// an online log-sum-exp for its rows *and* for its columns, so one sweep gives both directions of the symmetric
// loss. Memory: the normalised copies and accumulators (O(N*D)) plus one tile per thread.
//
// Parallel schedule without atomics or per-thread copies: the tiles are visited in nb "wavefront" steps; at
// step k, row block i (one task each) takes column block j = (i + k) mod nb. Within a step no two tasks share
// a column block, so column statistics (forward) and the b-gradient accumulator (backward) are updated by one
// task at a time; each task runs its GEMMs single-threaded (nested inside at::parallel_for). Results do not
// depend on the thread count: every tile's work is fixed and the accumulation order per block is step order.
//
// Numerics match the Triton kernels (kernels/scl_kernels/contrastive.py): fp32 accumulation; q = 1 - p_ii is kept from the
// off-diagonal mass, so the diagonal of G = softmax - I is -q exactly (no cancellation at T = 0.01, where
// p_ii rounds to 1); the per-row loss is -log1p(-q) when q < 0.5.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kBlock = 256;  // tile side: 256 x 256 fp32 = 256 KiB, L2-resident; the GEMM is 256 x 256 x D
constexpr double kEps = 1e-12;   // F.normalize's eps

struct Blocks {
  int64_t n, nb;
  int64_t start(int64_t i) const { return i * kBlock; }
  int64_t size(int64_t i) const { return std::min(kBlock, n - i * kBlock); }
};

// Row-normalised fp32 copy of x and the inverse norms 1 / max(||x_i||, eps).
std::tuple<at::Tensor, at::Tensor> normalise(const at::Tensor& x) {
  at::Tensor xf = x.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);  // own copy
  at::Tensor inv = at::linalg_vector_norm(xf, 2, {1}, false, at::kFloat).clamp_min_(kEps).reciprocal_();
  return {xf.mul_(inv.unsqueeze(1)), inv};
}

// Online log-sum-exp state of a set of rows (or columns): running max m, sum l = sum exp(s - m), and l_off, the
// part of l that excludes the diagonal entry.
struct LseState {
  float* m;
  float* l;
  float* l_off;
};

// Fold one tile into the state of its rows (dim = 1) or columns (dim = 0). `tile` is (rows x cols) logits;
// diagonal = whether the tile straddles the diagonal (row block == column block), in which case diag_out
// receives s_ii.
void lse_update(const at::Tensor& tile, int64_t dim, LseState st, bool diagonal, float* diag_out) {
  at::Tensor m_old = at::from_blob(st.m, {tile.size(1 - dim)}, at::kFloat);
  at::Tensor l = at::from_blob(st.l, {tile.size(1 - dim)}, at::kFloat);
  at::Tensor l_off = at::from_blob(st.l_off, {tile.size(1 - dim)}, at::kFloat);
  at::Tensor m_new = at::maximum(m_old, tile.amax(dim));
  at::Tensor p = at::exp(tile - m_new.unsqueeze(dim));
  at::Tensor alpha = at::exp(m_old - m_new);  // m_old = -inf on the first tile: alpha = 0, l = 0
  at::Tensor p_diag;
  if (diagonal) {
    at::Tensor d = p.diagonal();
    p_diag = d.clone();
    d.zero_();
    if (diag_out != nullptr) at::from_blob(diag_out, {tile.size(0)}, at::kFloat).copy_(tile.diagonal());
  }
  at::Tensor off = p.sum(dim);
  l_off.mul_(alpha).add_(off);
  l.mul_(alpha).add_(off);
  if (diagonal) l.add_(p_diag);
  m_old.copy_(m_new);
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature) {
  TORCH_CHECK(a.dim() == 2 && a.sizes() == b.sizes(), "a and b must both be (N, D), got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.size(0) > 0 && a.size(1) > 0, "N and D must be positive, got ", a.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "a and b must share one dtype, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16,
              "the native info_nce takes fp32, fp16 or bf16 (float64 runs the reference), got ", a.scalar_type());
  TORCH_CHECK(temperature.numel() == 1, "temperature must be a scalar, got ", temperature.sizes());
}

// Forward: returns (loss, stats) with stats (6, N) fp32 = [inv_a, inv_b, lse_a, lse_b, q_a, q_b]; lse_b and q_b
// are zero when not symmetric.
std::tuple<at::Tensor, at::Tensor> info_nce_native(const at::Tensor& a, const at::Tensor& b,
                                                   const at::Tensor& temperature, bool symmetric) {
  check_inputs(a, b, temperature);
  const Blocks blk{a.size(0), (a.size(0) + kBlock - 1) / kBlock};
  const int64_t n = blk.n;
  const double inv_t = 1.0 / temperature.item<double>();
  auto [an, inv_a] = normalise(a);
  auto [bn, inv_b] = normalise(b);

  at::Tensor stats = at::zeros({6, n}, a.options().dtype(at::kFloat));
  stats[0].copy_(inv_a);
  stats[1].copy_(inv_b);
  // running state: rows (a's direction) and columns (b's direction)
  at::Tensor state = at::empty({6, n}, a.options().dtype(at::kFloat));
  state[0].fill_(-INFINITY);
  state[3].fill_(-INFINITY);
  state.narrow(0, 1, 2).zero_();
  state.narrow(0, 4, 2).zero_();
  at::Tensor diag = at::empty({n}, a.options().dtype(at::kFloat));
  float* st = state.data_ptr<float>();
  float* diag_p = diag.data_ptr<float>();

  for (int64_t k = 0; k < blk.nb; ++k) {
    at::parallel_for(0, blk.nb, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = (i + k) % blk.nb;
        const int64_t r0 = blk.start(i), c0 = blk.start(j);
        at::Tensor tile = at::empty({blk.size(i), blk.size(j)}, an.options());
        at::addmm_out(tile, tile, an.narrow(0, r0, blk.size(i)), bn.narrow(0, c0, blk.size(j)).t(), 0.0, inv_t);
        lse_update(tile, 1, {st + r0, st + n + r0, st + 2 * n + r0}, i == j, diag_p + r0);
        if (symmetric) lse_update(tile, 0, {st + 3 * n + c0, st + 4 * n + c0, st + 5 * n + c0}, i == j, nullptr);
      }
    });
  }

  // lse = m + log l; q = l_off / l; per-row loss = lse - s_ii, as -log1p(-q) where that does not cancel
  at::Tensor loss_rows = at::zeros({n}, a.options().dtype(at::kFloat));
  const int directions = symmetric ? 2 : 1;
  float* stats_p = stats.data_ptr<float>();
  float* loss_p = loss_rows.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int dir = 0; dir < directions; ++dir) {
      const float* m = st + 3 * dir * n;
      const float* l = m + n;
      const float* l_off = m + 2 * n;
      float* lse = stats_p + (2 + dir) * n;
      float* q = stats_p + (4 + dir) * n;
      for (int64_t r = begin; r < end; ++r) {
        lse[r] = m[r] + std::log(l[r]);
        q[r] = l_off[r] / l[r];
        loss_p[r] += q[r] < 0.5f ? -std::log1p(-q[r]) : lse[r] - diag_p[r];
      }
    }
  });
  return {loss_rows.mean(), stats};
}

// Backward: (da, db, dtemperature); an unneeded gradient is an empty (0,) tensor.
//   G = g/N * (softmax_row(s) - I + [symmetric] (softmax_col(s) - I)),  s = an bn^T / T
//   dL/da_i = inv_a_i (sum_j G_ij bn_j / T - an_i r_i),  r_i = sum_j G_ij s_ij   (and the same for b with columns)
//   dL/dT = -sum_ij G_ij s_ij / T
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_native_backward(const at::Tensor& grad, const at::Tensor& a,
                                                                        const at::Tensor& b,
                                                                        const at::Tensor& temperature,
                                                                        const at::Tensor& stats, bool symmetric,
                                                                        bool need_a, bool need_b, bool need_t) {
  check_inputs(a, b, temperature);
  const Blocks blk{a.size(0), (a.size(0) + kBlock - 1) / kBlock};
  const int64_t n = blk.n;
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 6 && stats.size(1) == n && stats.scalar_type() == at::kFloat,
              "stats must be (6, N) float32 from info_nce_native, got ", stats.sizes(), " ", stats.scalar_type());
  // placeholders for gradients nobody asked for: distinct tensors (a custom op's outputs may not alias)
  at::Tensor da = at::empty({0}, a.options()), db = at::empty({0}, b.options());
  at::Tensor dt = at::empty({0}, temperature.options());
  if (!(need_a || need_b || need_t)) return {da, db, dt};
  const double t = temperature.item<double>();
  const double inv_t = 1.0 / t;
  const double coef = grad.item<double>() / static_cast<double>(n);
  const at::Tensor st = stats.contiguous();
  const at::Tensor inv_a = st[0], inv_b = st[1];
  const at::Tensor an = a.to(at::kFloat).mul(inv_a.unsqueeze(1)).contiguous();
  const at::Tensor bn = b.to(at::kFloat).mul(inv_b.unsqueeze(1)).contiguous();
  const float* lse_a = st.data_ptr<float>() + 2 * n;
  const float* lse_b = lse_a + n;
  const float* q_a = lse_a + 2 * n;
  const float* q_b = lse_a + 3 * n;

  const bool want_a = need_a, want_b = need_b;
  at::Tensor acc_a = want_a ? at::zeros_like(an) : at::Tensor();  // sum_j G_ij bn_j  (before g/N, 1/T)
  at::Tensor acc_b = want_b ? at::zeros_like(bn) : at::Tensor();  // sum_i G_ij an_i
  at::Tensor r = at::zeros({n}, an.options());                    // sum_j G_ij s_ij
  at::Tensor c = at::zeros({n}, an.options());                    // sum_i G_ij s_ij
  float* r_p = r.data_ptr<float>();
  float* c_p = c.data_ptr<float>();

  for (int64_t k = 0; k < blk.nb; ++k) {
    at::parallel_for(0, blk.nb, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = (i + k) % blk.nb;
        const int64_t r0 = blk.start(i), c0 = blk.start(j), rows = blk.size(i), cols = blk.size(j);
        const at::Tensor a_i = an.narrow(0, r0, rows), b_j = bn.narrow(0, c0, cols);
        at::Tensor s = at::empty({rows, cols}, an.options());
        at::addmm_out(s, s, a_i, b_j.t(), 0.0, inv_t);
        at::Tensor lse_r = at::from_blob(const_cast<float*>(lse_a) + r0, {rows, 1}, at::kFloat);
        at::Tensor g = at::exp(s - lse_r);  // row softmax; exponent <= 0 (lse bounds its row)
        if (symmetric) {
          at::Tensor lse_c = at::from_blob(const_cast<float*>(lse_b) + c0, {1, cols}, at::kFloat);
          g.add_(at::exp(s - lse_c));
        }
        if (i == j) {  // G_ii = (p_ii - 1) [+ (p^col_ii - 1)] = -q_a_i [- q_b_i], without cancellation
          at::Tensor d = g.diagonal();
          d.copy_(at::from_blob(const_cast<float*>(q_a) + r0, {rows}, at::kFloat)).neg_();
          if (symmetric) d.sub_(at::from_blob(const_cast<float*>(q_b) + r0, {rows}, at::kFloat));
        }
        at::Tensor gs = g * s;
        at::from_blob(r_p + r0, {rows}, at::kFloat).add_(gs.sum(1));
        if (want_b) at::from_blob(c_p + c0, {cols}, at::kFloat).add_(gs.sum(0));
        if (want_a) {
          at::Tensor out = acc_a.narrow(0, r0, rows);
          at::addmm_out(out, out, g, b_j);
        }
        if (want_b) {
          at::Tensor out = acc_b.narrow(0, c0, cols);
          at::addmm_out(out, out, g.t(), a_i);
        }
      }
    });
  }

  // dL/dx = coef * inv_x * (acc / T - xn * r): written out of the normalised copy, rounded once to x's dtype
  // in place (addcmul_ needs no N x D temporary): the fp32 result is the accumulator itself
  if (want_a) {
    da = acc_a.mul_(inv_t).addcmul_(an, r.unsqueeze(1), -1.0).mul_(inv_a.unsqueeze(1) * coef).to(a.scalar_type());
  }
  if (want_b) {
    db = acc_b.mul_(inv_t).addcmul_(bn, c.unsqueeze(1), -1.0).mul_(inv_b.unsqueeze(1) * coef).to(b.scalar_type());
  }
  if (need_t) dt = (r.sum(at::kDouble) * (-coef * inv_t)).to(temperature.scalar_type()).reshape(temperature.sizes());
  return {da, db, dt};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scl, m) {
  m.def("info_nce_native(Tensor a, Tensor b, Tensor temperature, bool symmetric) -> (Tensor, Tensor)");
  m.def(
      "info_nce_native_backward(Tensor grad, Tensor a, Tensor b, Tensor temperature, Tensor stats, bool symmetric, "
      "bool need_a, bool need_b, bool need_t) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scl, CPU, m) {
  m.impl("info_nce_native", &info_nce_native);
  m.impl("info_nce_native_backward", &info_nce_native_backward);
}
