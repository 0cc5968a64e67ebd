#include "tpl/error.h"
#include "tpl/gemm.h"

namespace tpl {

void check_gemm_run(const Gemm& g, const TensorView& x, const TensorView& y, bool with_bias,
                    Device device, const char* where) {
  const Where w{where};
  const GemmDesc& d = g.desc();
  TPL_CHECK(x.device() == device && y.device() == device, w, "x and y must be ",
            device == Device::kHost ? "host" : "device", " tensors, got ", x.describe(), " and ",
            y.describe());
  TPL_CHECK(x.cols() == d.k && x.dtype() == d.act, w, "x must be ", dtype_name(d.act),
            "[M, k=", d.k, "], got ", x.describe());
  TPL_CHECK(y.rows() == x.rows() && y.cols() == d.n && y.dtype() == d.out, w, "y must be ",
            dtype_name(d.out), "[M=", x.rows(), ", n=", d.n, "], got ", y.describe());
  TPL_CHECK(!with_bias || g.has_bias(), w, "run(with_bias=true) but no bias was planned");
  if (device == Device::kHost) TPL_CHECK(!views_overlap(x, y), w, "x and y must not overlap");
}

}  // namespace tpl
