/*
 * dho_subscribe_acl: a Mosquitto 2.x plugin that checks SUBSCRIBE requests of boxes.
 *
 * Why: Mosquitto's acl_file never checks subscriptions (mosquitto 2.0.x,
 * src/security_default.c: MOSQ_ACL_SUBSCRIBE always succeeds) and only filters each
 * delivery. For an ordinary subscription that filter is enough, but a shared subscription
 * ("$share/<group>/<filter>") takes its turn in the group's round robin before the filter
 * runs (src/subs.c, subs__shared_process): a box that joins the receivers' group
 * "$share/dho-receivers/..." is handed every n-th batch of every box and the ACL then drops
 * it. The batch is never delivered to a receiver (a black hole).
 *
 * What: a box (any user not named in service_users) may subscribe only to the exact filters
 * in box_filters, where "%u" stands for its username (its certificate CN, which is its box
 * id) and "%c" for its client id (the enrolment account logs in with its token id). Anything else, every wildcard and every "$share/..." included, is refused with
 * SUBACK 0x87 (not authorised). Service users' subscriptions, all publishes and all
 * deliveries are left to the ACL file (MOSQ_ERR_PLUGIN_DEFER).
 *
 * Configuration (mosquitto.conf), see docs/receiver.md:
 *   plugin /usr/lib/mosquitto/dho_subscribe_acl.so
 *   plugin_opt_box_filters dho/v1/down/%u/ack dho/v1/down/%u/cmd dho/v1/enrol/%c/reply
 *   plugin_opt_service_users dho-receiver-1 dho-receiver-2 dho-service
 *
 * Build: cc -O2 -Wall -Wextra -Werror -fPIC -shared -o dho_subscribe_acl.so
 *        dho_subscribe_acl.c   (Debian: packages gcc, mosquitto-dev, libmosquitto-dev)
 *
 * Written for this project against the plugin API in mosquitto_plugin.h and
 * mosquitto_broker.h (plugin version 5).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_WORDS 64

struct words {
	char *buffer;
	const char *word[MAX_WORDS];
	int count;
};

struct config {
	struct words box_filters;
	struct words service_users;
};

static mosquitto_plugin_id_t *plugin_id;
static struct config cfg;

/* Split a copy of a space-separated option value into words. */
static int split(struct words *out, const char *value)
{
	char *save = NULL;
	char *w;

	out->buffer = strdup(value);
	if(out->buffer == NULL) return MOSQ_ERR_NOMEM;
	for(w = strtok_r(out->buffer, " \t", &save); w; w = strtok_r(NULL, " \t", &save)){
		if(out->count == MAX_WORDS) return MOSQ_ERR_INVAL;
		out->word[out->count++] = w;
	}
	return MOSQ_ERR_SUCCESS;
}

/* True when topic equals pattern with every "%u" replaced by username and every "%c" by
 * client id. A name that holds a topic separator or a wildcard never matches. */
static bool matches(const char *pattern, const char *username, const char *client_id,
		const char *topic)
{
	const char *name;
	size_t len;

	while(*pattern){
		if(pattern[0] == '%' && (pattern[1] == 'u' || pattern[1] == 'c')){
			name = pattern[1] == 'u' ? username : client_id;
			if(name == NULL || name[0] == '\0' || strpbrk(name, "/+#") != NULL) return false;
			len = strlen(name);
			if(strncmp(topic, name, len) != 0) return false;
			topic += len;
			pattern += 2;
		}else{
			if(*topic != *pattern) return false;
			topic++;
			pattern++;
		}
	}
	return *topic == '\0';
}

static bool is_service_user(const char *username)
{
	int i;

	for(i = 0; i < cfg.service_users.count; i++){
		if(strcmp(cfg.service_users.word[i], username) == 0) return true;
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username;
	int i;

	(void)event;
	(void)userdata;
	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;

	username = mosquitto_client_username(ed->client);
	if(username == NULL || username[0] == '\0') return MOSQ_ERR_ACL_DENIED;
	if(is_service_user(username)) return MOSQ_ERR_PLUGIN_DEFER;
	/* A box id never holds a topic separator or a wildcard (the registry refuses them). */
	if(strpbrk(username, "/+#") != NULL) return MOSQ_ERR_ACL_DENIED;

	for(i = 0; i < cfg.box_filters.count; i++){
		if(matches(cfg.box_filters.word[i], username, mosquitto_client_id(ed->client), ed->topic)){
			return MOSQ_ERR_PLUGIN_DEFER;
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"dho_subscribe_acl: refused subscription of %s to %s", username, ed->topic);
	return MOSQ_ERR_ACL_DENIED;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	int i;
	int rc;

	(void)userdata;
	plugin_id = identifier;
	memset(&cfg, 0, sizeof(cfg));
	for(i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "box_filters") == 0){
			rc = split(&cfg.box_filters, options[i].value);
		}else if(strcmp(options[i].key, "service_users") == 0){
			rc = split(&cfg.service_users, options[i].value);
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"dho_subscribe_acl: unknown option plugin_opt_%s", options[i].key);
			rc = MOSQ_ERR_INVAL;
		}
		if(rc != MOSQ_ERR_SUCCESS) return rc;
	}
	if(cfg.box_filters.count == 0){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"dho_subscribe_acl: plugin_opt_box_filters is missing (boxes could subscribe to nothing)");
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"dho_subscribe_acl: %d box filter(s), %d service user(s)",
			cfg.box_filters.count, cfg.service_users.count);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	free(cfg.box_filters.buffer);
	free(cfg.service_users.buffer);
	memset(&cfg, 0, sizeof(cfg));
	return MOSQ_ERR_SUCCESS;
}
