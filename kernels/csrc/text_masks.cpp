// Text masks on CPU: BERT's 80/10/10 MLM mask and SCL's without-replacement [MASK] mask, given the random keys.
//
// The reference (reference.py: mlm_mask_ref, scl_text_mask_ref) spends ~10 full-size tensor ops on the MLM
// mask and two argsorts of every (B, L) row on the SCL mask; here each is one pass (MLM) or one nth_element
// per row over L keys (SCL), OpenMP over rows. Same keys in, bit-identical ids out: the comparisons are made
// in fp32 against thresholds rounded to fp32 (what torch does for `fp32_tensor < python_float`), the count is
// rounded half to even in double, and equal keys go to the lower index (the reference's stable argsort).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <vector>

namespace {

void check_like(const at::Tensor& t, const at::Tensor& ids, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.sizes() == ids.sizes(), name, " must have ids' shape ", ids.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> mlm_mask_native(const at::Tensor& ids, const at::Tensor& special,
                                                   const at::Tensor& choose, const at::Tensor& how,
                                                   const at::Tensor& rand_tok, double p, double r_mask,
                                                   double r_rand_end, int64_t mask_id) {
  check_like(special, ids, "special_mask", at::kBool);
  check_like(choose, ids, "choose", at::kFloat);
  check_like(how, ids, "how", at::kFloat);
  check_like(rand_tok, ids, "rand_tok", at::kLong);
  const at::Tensor ids_c = ids.contiguous();
  const at::Tensor special_c = special.contiguous();
  const at::Tensor choose_c = choose.contiguous();
  const at::Tensor how_c = how.contiguous();
  const at::Tensor rand_c = rand_tok.contiguous();
  at::Tensor out = at::empty_like(ids_c);
  at::Tensor labels = at::empty_like(ids_c);
  const int64_t n = ids_c.numel();
  const float p_f = static_cast<float>(p);
  const float mask_f = static_cast<float>(r_mask);
  const float rand_end_f = static_cast<float>(r_rand_end);
  AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "mlm_mask_native", [&] {
    const index_t* src = ids_c.data_ptr<index_t>();
    const bool* spec = special_c.data_ptr<bool>();
    const float* ch = choose_c.data_ptr<float>();
    const float* hw = how_c.data_ptr<float>();
    const int64_t* rt = rand_c.data_ptr<int64_t>();
    index_t* dst = out.data_ptr<index_t>();
    index_t* lab = labels.data_ptr<index_t>();
    at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const bool chosen = ch[i] < p_f && !spec[i];
        index_t v = src[i];
        if (chosen && hw[i] < mask_f) {
          v = static_cast<index_t>(mask_id);
        } else if (chosen && hw[i] < rand_end_f) {
          v = static_cast<index_t>(rt[i]);
        }
        dst[i] = v;
        lab[i] = chosen ? src[i] : static_cast<index_t>(-100);
      }
    });
  });
  return {out, labels};
}

at::Tensor scl_text_mask_native(const at::Tensor& ids, const at::Tensor& special, const at::Tensor& keys,
                                double ratio, int64_t mask_id) {
  TORCH_CHECK(ids.dim() == 2, "ids must be (B, L), got ", ids.sizes());
  check_like(special, ids, "special_mask", at::kBool);
  check_like(keys, ids, "keys", at::kFloat);
  const at::Tensor ids_c = ids.contiguous();
  const at::Tensor special_c = special.contiguous();
  const at::Tensor keys_c = keys.contiguous();
  at::Tensor out = ids_c.clone();
  const int64_t rows = ids_c.size(0);
  const int64_t length = ids_c.size(1);
  AT_DISPATCH_INDEX_TYPES(ids_c.scalar_type(), "scl_text_mask_native", [&] {
    const bool* spec_all = special_c.data_ptr<bool>();
    const float* keys_all = keys_c.data_ptr<float>();
    index_t* dst_all = out.data_ptr<index_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> order(length);
      std::vector<float> key(length);
      for (int64_t r = begin; r < end; ++r) {
        const bool* spec = spec_all + r * length;
        int64_t n_real = 0;
        for (int64_t j = 0; j < length; ++j) {
          n_real += spec[j] ? 0 : 1;
          key[j] = spec[j] ? 2.0f : keys_all[r * length + j];  // special and padding rank last
        }
        if (n_real == 0) continue;
        // round half to even (the default rounding mode), at least one, at most every real token
        const int64_t count = std::min<int64_t>(
            std::max<int64_t>(static_cast<int64_t>(std::nearbyint(static_cast<double>(n_real) * ratio)), 1), n_real);
        std::iota(order.begin(), order.end(), int64_t{0});
        const float* k = key.data();
        std::nth_element(order.begin(), order.begin() + (count - 1), order.end(),
                         [k](int64_t a, int64_t b) { return k[a] < k[b] || (k[a] == k[b] && a < b); });
        index_t* dst = dst_all + r * length;
        for (int64_t c = 0; c < count; ++c) dst[order[c]] = static_cast<index_t>(mask_id);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scl, m) {
  m.def(
      "mlm_mask_native(Tensor ids, Tensor special_mask, Tensor choose, Tensor how, Tensor rand_tok, float p, "
      "float r_mask, float r_rand_end, int mask_id) -> (Tensor, Tensor)");
  m.def("scl_text_mask_native(Tensor ids, Tensor special_mask, Tensor keys, float ratio, int mask_id) -> Tensor");
}

TORCH_LIBRARY_IMPL(scl, CPU, m) {
  m.impl("mlm_mask_native", &mlm_mask_native);
  m.impl("scl_text_mask_native", &scl_text_mask_native);
}
