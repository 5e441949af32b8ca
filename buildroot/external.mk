include $(sort $(wildcard $(BR2_EXTERNAL_JETKVM_METRICS_PATH)/package/*/*.mk))
