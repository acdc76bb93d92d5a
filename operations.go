package oauth2upstream

import (
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// register puts what the handler serves in its registry, where the admin
// API, the health route, the metrics and the connect page find it.
func (h *Handler) register(config live.Config) {
	h.live = &live.Handler{
		Engine:   h.engine,
		Client:   keystore.Binding{TokenURL: h.TokenURL, ClientID: h.ClientID},
		Grant:    h.Grant,
		Scopes:   h.Scopes,
		KeySets:  h.keySets,
		Config:   config,
		Provider: h.providerName(),
	}
	h.registry.Handlers.Add(h.live)
}

// unregister takes the handler out of its registry.
func (h *Handler) unregister() {
	if h.live != nil {
		h.registry.Handlers.Remove(h.live)
	}
}

// operations is what a handler sets up so that it can be operated: its
// metrics and its change notifications. It is built in Provision and
// read-only afterwards.
type operations struct {
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
	m, err := newUpstreamMetrics(registry, live.From(ctx), live.ConfigOf(ctx))
	if err != nil {
		return nil, err
	}
	ops := &operations{metrics: m}
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
