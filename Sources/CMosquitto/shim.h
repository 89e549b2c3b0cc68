#ifndef EDGE_CMOSQUITTO_SHIM_H
#define EDGE_CMOSQUITTO_SHIM_H
// libmosquitto (Debian: libmosquitto-dev) with the MQTT 5 property and reason-code names.
#include <mosquitto.h>
#include <mqtt_protocol.h>
#endif
