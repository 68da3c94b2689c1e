/* placeholder while the kernel is being written */
#include "internal.h"
cpa_status cpa_attn_ctx_create(const cpa_attn_ctx_config *c, cpa_attn_ctx **o) { (void)c; *o = NULL; return CPA_OK; }
void cpa_attn_ctx_destroy(cpa_attn_ctx *c) { (void)c; }
int cpa_attn_ctx_threads(const cpa_attn_ctx *c) { (void)c; return 1; }
cpa_status cpa_attn_forward(cpa_attn_ctx *c, const cpa_attn_desc *d, cpa_tensor o, cpa_tensor l) { (void)c; (void)d; (void)o; (void)l; return cpa_error(CPA_ERR_INTERNAL, "kernel not yet built"); }
cpa_status cpa_attn_backward(cpa_attn_ctx *c, const cpa_attn_desc *d, cpa_tensor o, cpa_tensor l, cpa_tensor a, cpa_tensor b, cpa_tensor e, cpa_tensor f) { (void)c; (void)d; (void)o; (void)l; (void)a; (void)b; (void)e; (void)f; return cpa_error(CPA_ERR_INTERNAL, "kernel not yet built"); }
cpa_status cpa_attn_merge(cpa_tensor o, cpa_tensor l, cpa_tensor o2, cpa_tensor l2, cpa_rows r) { (void)o; (void)l; (void)o2; (void)l2; (void)r; return cpa_error(CPA_ERR_INTERNAL, "kernel not yet built"); }
double cpa_attn_forward_flops(const cpa_attn_desc *d) { (void)d; return 0; }
