// Trampolines between the library's callback signatures (void *user data)
// and the Go functions exported in callbacks.go (an integer cgo.Handle).

#include "callbacks.h"

#include <stdbool.h>
#include <stdint.h>

#include "_cgo_export.h"

static pts_error_t *ptsgo_factory(void *user_data, const pts_kwargs_t *kwargs, bool loading,
                                  pts_model_builder_t *builder) {
  return ptsgoFactory((uintptr_t)user_data, (pts_kwargs_t *)kwargs, loading, builder);
}

static pts_error_t *ptsgo_forward(void *instance, const pts_tensor_t *input, bool train,
                                  pts_tensor_t **output) {
  return ptsgoForward((uintptr_t)instance, (pts_tensor_t *)input, train, output);
}

static void ptsgo_release(void *handle) { ptsgoRelease((uintptr_t)handle); }

pts_error_t *ptsgo_register_model(pts_registry_t *registry, const char *name, uintptr_t factory) {
  return pts_registry_register_model(registry, name, ptsgo_factory, (void *)factory, ptsgo_release);
}

pts_error_t *ptsgo_set_forward(pts_model_builder_t *builder, uintptr_t instance) {
  return pts_model_builder_set_forward(builder, ptsgo_forward, (void *)instance, ptsgo_release);
}

static pts_error_t *ptsgo_get_state(void *object, pts_state_t *state) {
  return ptsgoGetState((uintptr_t)object, state);
}

static pts_error_t *ptsgo_check_state(void *object, const pts_state_t *state) {
  return ptsgoReadState((uintptr_t)object, (pts_state_t *)state, false);
}

static pts_error_t *ptsgo_load_state(void *object, const pts_state_t *state) {
  return ptsgoReadState((uintptr_t)object, (pts_state_t *)state, true);
}

pts_error_t *ptsgo_track(pts_container_t *container, const char *name, const char *class_name,
                         uintptr_t object) {
  pts_stateful_t table = {class_name,        (void *)object,   ptsgo_get_state,
                          ptsgo_check_state, ptsgo_load_state, ptsgo_release};
  return pts_container_track(container, name, &table);
}

static void ptsgo_progress(uint64_t done, uint64_t total, void *relay) {
  ptsgoProgress((uintptr_t)relay, done, total);
}

pts_error_t *ptsgo_load_options_set_progress(pts_load_options_t *options, uintptr_t relay) {
  return pts_load_options_set_progress(options, ptsgo_progress, (void *)relay, ptsgo_release);
}

pts_error_t *ptsgo_container_set_save_progress(pts_container_t *container, uintptr_t relay) {
  return pts_container_set_save_progress(container, ptsgo_progress, (void *)relay, ptsgo_release);
}

static pts_error_t *ptsgo_optim_step(void *cls, const pts_optim_group_t *group, pts_tensor_t *param,
                                     const pts_tensor_t *grad, pts_optim_state_t *state) {
  return ptsgoOptimStep((uintptr_t)cls, (pts_optim_group_t *)group, param, (pts_tensor_t *)grad,
                        state);
}

static pts_error_t *ptsgo_optim_check_group(void *cls, const pts_optim_group_t *group) {
  return ptsgoOptimCheckGroup((uintptr_t)cls, (pts_optim_group_t *)group);
}

pts_error_t *ptsgo_register_optimizer(pts_registry_t *registry, const char *name,
                                      const char *hyperparameters_json,
                                      const pts_optim_state_key_t *state_keys, size_t n_state_keys,
                                      bool check_group, uintptr_t cls) {
  pts_optimizer_class_t table = {hyperparameters_json, state_keys, n_state_keys, ptsgo_optim_step,
                                 check_group ? ptsgo_optim_check_group : NULL};
  return pts_registry_register_optimizer(registry, name, &table, (void *)cls, ptsgo_release);
}

static pts_error_t *ptsgo_closure(void *closure, double *loss) {
  return ptsgoClosure((uintptr_t)closure, loss);
}

pts_error_t *ptsgo_step_closure(pts_container_t *container, uintptr_t closure, double *loss) {
  return pts_container_step_closure(container, ptsgo_closure, (void *)closure, loss);
}
