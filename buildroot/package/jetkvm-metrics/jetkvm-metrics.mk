################################################################################
#
# jetkvm-metrics
#
################################################################################

JETKVM_METRICS_VERSION = 0.1.0
JETKVM_METRICS_SITE = $(BR2_EXTERNAL_JETKVM_METRICS_PATH)/..
JETKVM_METRICS_SITE_METHOD = local
JETKVM_METRICS_LICENSE = GPL-2.0-only
JETKVM_METRICS_DEPENDENCIES = host-pkgconf openssl
# Build outputs and fetched packages of the source tree are not sources.
JETKVM_METRICS_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /out --exclude /.git

# A local source skips Buildroot's download step, where cargo-package
# vendors the crates. scripts/build/vendor is that step for this tree: it fills
# VENDOR/ from the crates named in Cargo.lock. Here the copied tree is
# pointed at it, so the build runs --offline --locked as any cargo package.
define JETKVM_METRICS_USE_VENDORED_CRATES
	@test -d $(@D)/VENDOR || { \
		echo "jetkvm-metrics: no VENDOR/ in $(JETKVM_METRICS_SITE): run scripts/build/vendor there first"; \
		exit 1; }
	printf '\n[source.crates-io]\nreplace-with = "vendored-sources"\n\n[source.vendored-sources]\ndirectory = "VENDOR"\n' \
		>> $(@D)/.cargo/config.toml
endef
JETKVM_METRICS_POST_RSYNC_HOOKS += JETKVM_METRICS_USE_VENDORED_CRATES

# The daemon's own user (makeusers: a system id, no login, no home).
JETKVM_METRICS_USERS = jetkvm-metrics -1 jetkvm-metrics -1 * - - - jetkvm-metrics exporter

define JETKVM_METRICS_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(JETKVM_METRICS_PKGDIR)/S95jetkvm-metrics \
		$(TARGET_DIR)/etc/init.d/S95jetkvm-metrics
endef

define JETKVM_METRICS_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(JETKVM_METRICS_PKGDIR)/config.toml \
		$(TARGET_DIR)/etc/jetkvm-metrics/config.toml
endef
JETKVM_METRICS_POST_INSTALL_TARGET_HOOKS += JETKVM_METRICS_INSTALL_CONFIG

$(eval $(cargo-package))
