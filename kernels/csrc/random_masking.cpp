// random_masking on CPU: per-sample selection of the K smallest keys, the same spatial subset in every frame,
// gather of the kept tokens with the position embedding added in the same pass; backward as a gather through
// the inverse map (slot), so every output element is written once and nothing needs atomics.
//
// The reference (reference.py: random_masking_ref) argsorts all P keys, then gathers and adds pos as three
// separate full-size passes; here selection is nth_element (O(P)) + a sort of the K winners, and the kept
// tokens are written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// Selection for every sample: ids (B, K) ascending, slot (B, P) = output slot of a kept position, -1 otherwise.
// Ties in the keys go to the lower index, which is what a stable argsort does: the reference uses one, so
// both pick bit-identical subsets from the same keys.
template <typename key_t>
void select_kept(const at::Tensor& noise, int64_t keep, at::Tensor& ids, at::Tensor& slot) {
  const int64_t batch = noise.size(0);
  const int64_t positions = noise.size(1);
  const key_t* keys_all = noise.data_ptr<key_t>();
  int64_t* ids_all = ids.data_ptr<int64_t>();
  int32_t* slot_all = slot.data_ptr<int32_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(positions);
    for (int64_t b = begin; b < end; ++b) {
      const key_t* keys = keys_all + b * positions;
      std::iota(order.begin(), order.end(), int64_t{0});
      auto smaller = [keys](int64_t i, int64_t j) { return keys[i] < keys[j] || (keys[i] == keys[j] && i < j); };
      std::nth_element(order.begin(), order.begin() + keep, order.end(), smaller);
      std::sort(order.begin(), order.begin() + keep);
      int32_t* slot_row = slot_all + b * positions;
      std::fill(slot_row, slot_row + positions, int32_t{-1});
      for (int64_t k = 0; k < keep; ++k) {
        ids_all[b * keep + k] = order[k];
        slot_row[order[k]] = static_cast<int32_t>(k);
      }
    }
  });
}

// kept[b, f, k] = x[b, f, ids[b, k]] (+ pos[ids[b, k]]), one (sample, frame) per task.
template <typename scalar_t>
void gather_kept(const at::Tensor& x, const at::Tensor& ids, const std::optional<at::Tensor>& pos, int64_t frames,
                 at::Tensor& kept) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = ids.size(0);
  const int64_t keep = ids.size(1);
  const int64_t positions = x.size(1) / frames;
  const int64_t dim = x.size(2);
  const scalar_t* src_all = x.data_ptr<scalar_t>();
  const scalar_t* pos_all = pos.has_value() ? pos->data_ptr<scalar_t>() : nullptr;
  const int64_t* ids_all = ids.data_ptr<int64_t>();
  scalar_t* dst_all = kept.data_ptr<scalar_t>();
  at::parallel_for(0, batch * frames, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bf = begin; bf < end; ++bf) {
      const int64_t b = bf / frames;
      for (int64_t k = 0; k < keep; ++k) {
        const int64_t p = ids_all[b * keep + k];
        const scalar_t* src = src_all + (bf * positions + p) * dim;
        scalar_t* dst = dst_all + (bf * keep + k) * dim;
        if (pos_all == nullptr) {
          std::memcpy(dst, src, dim * sizeof(scalar_t));
          continue;
        }
        const scalar_t* pe = pos_all + p * dim;
        // one rounding to scalar_t, like the reference's `x + pos` in the input dtype
        for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<scalar_t>(acc_t(src[d]) + acc_t(pe[d]));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_native(const at::Tensor& x, const at::Tensor& noise,
                                                                     int64_t keep, int64_t frames,
                                                                     const std::optional<at::Tensor>& pos) {
  TORCH_CHECK(x.dim() == 3, "x must be (B, F*P, D), got ", x.sizes());
  TORCH_CHECK(frames >= 1 && x.size(1) % frames == 0, "x.shape[1] must be a multiple of frames=", frames, ", got ",
              x.sizes());
  const int64_t batch = x.size(0);
  const int64_t positions = x.size(1) / frames;
  const int64_t dim = x.size(2);
  TORCH_CHECK(noise.dim() == 2 && noise.size(0) == batch && noise.size(1) == positions, "noise must be (B, P)=(",
              batch, ", ", positions, "), got ", noise.sizes());
  TORCH_CHECK(keep >= 0 && keep <= positions, "keep must be in [0, ", positions, "], got ", keep);
  TORCH_CHECK(positions <= INT32_MAX, "P must fit int32, got ", positions);
  if (pos.has_value()) {
    TORCH_CHECK(pos->dim() == 2 && pos->size(0) == positions && pos->size(1) == dim, "pos must be (P, D)=(",
                positions, ", ", dim, "), got ", pos->sizes());
    TORCH_CHECK(pos->scalar_type() == x.scalar_type(), "pos dtype must match x, got ", pos->scalar_type(), " and ",
                x.scalar_type());
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor keys = noise.contiguous();
  std::optional<at::Tensor> pos_c;
  if (pos.has_value()) pos_c = pos->contiguous();

  at::Tensor ids = at::empty({batch, keep}, x.options().dtype(at::kLong));
  at::Tensor slot = at::empty({batch, positions}, x.options().dtype(at::kInt));
  at::Tensor kept = at::empty({batch, frames * keep, dim}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "random_masking_select",
                                  [&] { select_kept<scalar_t>(keys, keep, ids, slot); });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "random_masking_gather",
                                  [&] { gather_kept<scalar_t>(xc, ids, pos_c, frames, kept); });
  return {kept, ids, slot};
}

// grad_x[b, f, p] = grad_kept[b, f, slot[b, p]] where p was kept, zeros elsewhere.
template <typename scalar_t>
void scatter_grad_x(const at::Tensor& grad_kept, const at::Tensor& slot, int64_t frames, at::Tensor& grad_x) {
  const int64_t positions = slot.size(1);
  const int64_t keep = grad_kept.size(1) / frames;
  const int64_t dim = grad_kept.size(2);
  const scalar_t* src_all = grad_kept.data_ptr<scalar_t>();
  const int32_t* slot_all = slot.data_ptr<int32_t>();
  scalar_t* dst_all = grad_x.data_ptr<scalar_t>();
  at::parallel_for(0, slot.size(0) * frames, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bf = begin; bf < end; ++bf) {
      const int32_t* slot_row = slot_all + (bf / frames) * positions;
      for (int64_t p = 0; p < positions; ++p) {
        scalar_t* dst = dst_all + (bf * positions + p) * dim;
        const int32_t s = slot_row[p];
        if (s < 0) {
          std::fill(dst, dst + dim, scalar_t(0));
        } else {
          std::memcpy(dst, src_all + (bf * keep + s) * dim, dim * sizeof(scalar_t));
        }
      }
    }
  });
}

// grad_pos[p] = sum over b, f (in that fixed order) of grad_kept[b, f, slot[b, p]]: one position per task, so
// the sum is deterministic without atomics; accumulated in opmath and rounded once.
template <typename scalar_t>
void reduce_grad_pos(const at::Tensor& grad_kept, const at::Tensor& slot, int64_t frames, at::Tensor& grad_pos) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = slot.size(0);
  const int64_t positions = slot.size(1);
  const int64_t keep = grad_kept.size(1) / frames;
  const int64_t dim = grad_kept.size(2);
  const scalar_t* src_all = grad_kept.data_ptr<scalar_t>();
  const int32_t* slot_all = slot.data_ptr<int32_t>();
  scalar_t* dst_all = grad_pos.data_ptr<scalar_t>();
  at::parallel_for(0, positions, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(dim);
    for (int64_t p = begin; p < end; ++p) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t b = 0; b < batch; ++b) {
        const int32_t s = slot_all[b * positions + p];
        if (s < 0) continue;
        for (int64_t f = 0; f < frames; ++f) {
          const scalar_t* src = src_all + ((b * frames + f) * keep + s) * dim;
          for (int64_t d = 0; d < dim; ++d) acc[d] += acc_t(src[d]);
        }
      }
      scalar_t* dst = dst_all + p * dim;
      for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

std::vector<at::Tensor> random_masking_native_backward(const at::Tensor& grad_kept, const at::Tensor& slot,
                                                       int64_t frames, bool with_pos) {
  TORCH_CHECK(grad_kept.dim() == 3 && slot.dim() == 2 && grad_kept.size(0) == slot.size(0),
              "grad_kept must be (B, F*K, D) and slot (B, P), got ", grad_kept.sizes(), " and ", slot.sizes());
  TORCH_CHECK(frames >= 1 && grad_kept.size(1) % frames == 0, "grad_kept.shape[1] must be a multiple of frames=",
              frames, ", got ", grad_kept.sizes());
  TORCH_CHECK(slot.scalar_type() == at::kInt, "slot must be int32, got ", slot.scalar_type());
  const at::Tensor g = grad_kept.contiguous();
  const at::Tensor s = slot.contiguous();
  const int64_t positions = s.size(1);
  const int64_t dim = g.size(2);
  at::Tensor grad_x = at::empty({s.size(0), frames * positions, dim}, g.options());
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "random_masking_backward", [&] {
    scatter_grad_x<scalar_t>(g, s, frames, grad_x);
    grads.push_back(grad_x);
    if (with_pos) {
      at::Tensor grad_pos = at::empty({positions, dim}, g.options());
      reduce_grad_pos<scalar_t>(g, s, frames, grad_pos);
      grads.push_back(grad_pos);
    }
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scl, m) {
  m.def("random_masking_native(Tensor x, Tensor noise, int keep, int frames, Tensor? pos) -> (Tensor, Tensor, Tensor)");
  m.def("random_masking_native_backward(Tensor grad_kept, Tensor slot, int frames, bool with_pos) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(scl, CPU, m) {
  m.impl("random_masking_native", &random_masking_native);
  m.impl("random_masking_native_backward", &random_masking_native_backward);
}
