package oauth2upstream

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// liveHandlers is every live oauth2_upstream handler of the process: the
// admin API, the health route, the metrics and the connect page find key
// sets through it.
var liveHandlers liveSet[*Handler]

func registerHandler(h *Handler)     { liveHandlers.add(h) }
func unregisterHandler(h *Handler)   { liveHandlers.remove(h) }
func registeredHandlers() []*Handler { return liveHandlers.all() }

// handlersOfConfig returns the live handlers provisioned in the Caddy config
// whose metrics registry is config. Caddy gives every loaded config its own
// context, and every context its own registry, so the registry tells which
// config a handler belongs to.
func handlersOfConfig(config *prometheus.Registry) []*Handler {
	return slices.DeleteFunc(registeredHandlers(), func(h *Handler) bool { return h.ops.config != config })
}

// operations is what a handler sets up so that it can be operated: its
// metrics and its change notifications. It is built in Provision and
// read-only afterwards.
type operations struct {
	// config is the metrics registry of the handler's Caddy config, which
	// also identifies the config (see handlersOfConfig).
	config   *prometheus.Registry
	metrics  *upstreamMetrics
	notifier *credential.Notifier // nil without the notify option
	stopOnce sync.Once
}

// newOperations registers the handler's metrics and starts its change
// notifier when notify.URL is set.
func newOperations(ctx caddy.Context, notify credential.NotifyConfig, logger *zap.Logger) (*operations, error) {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		registry = prometheus.NewRegistry() // a context built without one: metrics go nowhere
	}
	m, err := newUpstreamMetrics(registry)
	if err != nil {
		return nil, err
	}
	ops := &operations{config: registry, metrics: m}
	if notify.URL != "" {
		if ops.notifier, err = credential.NewNotifier(notify, logger); err != nil {
			return nil, fmt.Errorf("starting the change notifier: %w", err)
		}
	}
	return ops, nil
}

// observer is what the credential engine reports to.
func (o *operations) observer() credential.Observer {
	if o.notifier == nil {
		return o.metrics
	}
	return credential.Observers{o.metrics, o.notifier}
}

// stop stops the notifier, after the delivery of pending changes or a
// bounded drain time. It runs in Cleanup after the engine has stored what
// its refreshes in flight granted, so that their changes are delivered too.
// Calling it again does nothing.
func (o *operations) stop() {
	if o == nil {
		return
	}
	o.stopOnce.Do(func() {
		if o.notifier != nil {
			o.notifier.Close()
		}
	})
}

// countReplay counts the outcome of a trigger status: the request was
// replayed, could not be (its body was not kept), or the refresh failed.
func (o *operations) countReplay(keySet, outcome string) {
	if o != nil {
		o.metrics.replays.WithLabelValues(keySet, outcome).Inc()
	}
}

// serves reports whether the handler can use key set name: its key_set is
// that name, or has placeholders and key_set_allow admits the name.
func (h *Handler) serves(name string) bool {
	if h.keySetIsTemplate {
		return h.allowKeySet(name) == nil
	}
	return h.KeySet == name
}

// handlerStatuses returns the status of the key sets the handler knows
// whose names sort after after: its configured key set (loaded now if no
// request loaded it yet) and the key sets it has loaded, one per name, at
// most limit of those (all when limit is zero or negative) and by name.
func (h *Handler) handlerStatuses(ctx context.Context, after string, limit int) []credential.Status {
	var out []credential.Status
	if !h.keySetIsTemplate && h.KeySet > after {
		s, err := h.engine.Status(ctx, h.KeySet)
		if err != nil {
			s = credential.FailedStatus(h.KeySet, err)
		}
		out = append(out, s)
	}
	for _, s := range h.engine.StatusesAfter(after, limit) {
		if h.keySetIsTemplate || s.Name != h.KeySet {
			out = append(out, s)
		}
	}
	return out
}
