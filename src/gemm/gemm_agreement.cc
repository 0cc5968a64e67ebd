// Agreement on measured GEMM choices across ranks (tpl/cpu_gemm.h): the root's choice, sent as
// a fixed-size name so that every rank posts the same broadcast.
#include <algorithm>
#include <cstring>

#include "tpl/communicator.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"

namespace tpl {

GemmAgreement gemm_agreement_from_root(Communicator& comm, int root) {
  TPL_CHECK(root >= 0 && root < comm.size(), (Where{"cpu_gemm", comm.rank()}), "agreement root ",
            root, " is not a member of a group of ", comm.size());
  return [&comm, root](const GemmDesc&, const std::string& local) {
    constexpr std::int64_t kLen = 64;
    // The list's names are short; a longer one would arrive cut, match no implementation, and
    // leave each rank on its own choice (make() warns), never hang or mislead.
    Tensor buf(DType::kI8, 1, kLen);
    std::memset(buf.data(), 0, kLen);
    if (comm.rank() == root)
      std::memcpy(buf.data(), local.data(), std::min<std::size_t>(local.size(), kLen - 1));
    comm.broadcast(buf, root);
    return std::string(static_cast<const char*>(buf.data()));
  };
}

}  // namespace tpl
