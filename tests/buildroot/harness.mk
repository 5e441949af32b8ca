# Runs the package's own .mk definitions (hooks and install commands) the way
# Buildroot's package infrastructure would, outside Buildroot, so the test
# exercises the real text of jetkvm-metrics.mk. Variables Buildroot provides
# are set by the caller: BR2_EXTERNAL_JETKVM_METRICS_PATH, SRC, TARGET_DIR.

INSTALL = install
# cargo-package is Buildroot's; its steps are run by the test script.
cargo-package =

include $(BR2_EXTERNAL_JETKVM_METRICS_PATH)/package/jetkvm-metrics/jetkvm-metrics.mk
JETKVM_METRICS_PKGDIR = $(BR2_EXTERNAL_JETKVM_METRICS_PATH)/package/jetkvm-metrics

.PHONY: print-rsync-exclusions
print-rsync-exclusions:
	@echo $(JETKVM_METRICS_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS)

# $(@D) is the package's build directory, as in Buildroot's hooks.
$(SRC)/.stamp_rsynced:
	$(foreach hook,$(JETKVM_METRICS_POST_RSYNC_HOOKS),$(call $(hook))$(sep))
	touch $@

$(SRC)/.stamp_target_installed:
	$(JETKVM_METRICS_INSTALL_INIT_SYSV)
	$(foreach hook,$(JETKVM_METRICS_POST_INSTALL_TARGET_HOOKS),$(call $(hook))$(sep))
	touch $@

define sep


endef
