package oauth2upstream

import (
	"context"
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// liveHandlers is every oauth2_upstream handler of the process between its
// Provision and its Cleanup, in the order they were provisioned: the admin
// API, the health route and the expiry gauge find key sets through it.
// Caddy provisions a new config before it cleans up the old one, so during a
// reload the handlers of both configs are here.
var liveHandlers struct {
	mu       sync.Mutex // guards handlers
	handlers []*Handler
}

func registerHandler(h *Handler) {
	liveHandlers.mu.Lock()
	defer liveHandlers.mu.Unlock()
	if !slices.Contains(liveHandlers.handlers, h) {
		liveHandlers.handlers = append(liveHandlers.handlers, h)
	}
}

func unregisterHandler(h *Handler) {
	liveHandlers.mu.Lock()
	defer liveHandlers.mu.Unlock()
	liveHandlers.handlers = slices.DeleteFunc(liveHandlers.handlers, func(x *Handler) bool { return x == h })
}

// registeredHandlers returns a snapshot of the live handlers.
func registeredHandlers() []*Handler {
	liveHandlers.mu.Lock()
	defer liveHandlers.mu.Unlock()
	return slices.Clone(liveHandlers.handlers)
}

// handlersOfConfig returns the live handlers provisioned in the Caddy config
// whose metrics registry is config. Caddy gives every loaded config its own
// context, and every context its own registry, so the registry tells which
// config a handler belongs to.
func handlersOfConfig(config *prometheus.Registry) []*Handler {
	return slices.DeleteFunc(registeredHandlers(), func(h *Handler) bool { return h.ops.config != config })
}

// operations is what a handler sets up so that it can be operated: its
// metrics, its change notifications, and its place among the live handlers.
// It is built in Provision and read-only afterwards.
type operations struct {
	// config is the metrics registry of the handler's Caddy config, which
	// also identifies the config (see handlersOfConfig).
	config   *prometheus.Registry
	metrics  *upstreamMetrics
	notifier *notifier // nil without the notify option
	stop     sync.Once
}

// provisionOperations registers the handler's metrics, starts its change
// notifier when notify is set, and registers the handler as live. It runs
// last in Provision, once the refresher exists.
func (h *Handler) provisionOperations(ctx caddy.Context) error {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		registry = prometheus.NewRegistry() // a context built without one: metrics go nowhere
	}
	m, err := newUpstreamMetrics(registry)
	if err != nil {
		return err
	}
	ops := &operations{config: registry, metrics: m}
	observers := fanOut{m}
	h.Notify = caddy.NewReplacer().ReplaceKnown(h.Notify, "")
	if h.Notify != "" {
		ops.notifier = newNotifier(h.Notify, h.logger)
		observers = append(observers, ops.notifier)
	}
	h.refresher.observer = observers
	h.ops = ops
	registerHandler(h)
	return nil
}

// cleanupOperations unregisters the handler and stops its notifier, after
// the delivery of pending changes or a bounded drain time. It runs in
// Cleanup after the refresher has stored what its refreshes in flight
// granted, so that their changes are delivered too. Calling it again does
// nothing.
func (h *Handler) cleanupOperations() {
	unregisterHandler(h)
	if h.ops == nil {
		return
	}
	h.ops.stop.Do(func() {
		if h.ops.notifier != nil {
			h.ops.notifier.close()
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

// fanOut passes what the refresher does to several observers.
type fanOut []refreshObserver

// Interface guards
var (
	_ refreshObserver = fanOut(nil)
	_ refreshObserver = (*upstreamMetrics)(nil)
	_ refreshObserver = (*notifier)(nil)
)

func (f fanOut) grantDone(keySet string, err error, took time.Duration) {
	for _, o := range f {
		o.grantDone(keySet, err, took)
	}
}

func (f fanOut) keySetStored(ks *keystore.KeySet) {
	for _, o := range f {
		o.keySetStored(ks)
	}
}

func (f fanOut) keystoreFailed(operation string) {
	for _, o := range f {
		o.keystoreFailed(operation)
	}
}

// serves reports whether the handler can use key set name: its key_set is
// that name, or has placeholders and so may select any name.
func (h *Handler) serves(name string) bool {
	return h.keySetIsTemplate || h.KeySet == name
}

// handlerStatuses returns the status of every key set the handler knows:
// its configured key set (loaded now if no request loaded it yet) and every
// key set it has loaded, one per name.
func (h *Handler) handlerStatuses(ctx context.Context) []KeySetStatus {
	var out []KeySetStatus
	if !h.keySetIsTemplate {
		s, err := h.refresher.Status(ctx, h.KeySet)
		if err != nil {
			s = failedStatus(h.KeySet, err)
		}
		out = append(out, s)
	}
	for _, s := range h.refresher.Statuses() {
		if h.keySetIsTemplate || s.Name != h.KeySet {
			out = append(out, s)
		}
	}
	return out
}

// failedStatus is the status of a key set that could not be loaded: one
// that does not exist or whose document is corrupt needs a person; a
// keystore that cannot be read may recover.
func failedStatus(name string, err error) KeySetStatus {
	s := KeySetStatus{Name: name, LastResult: "error", State: stateKeystoreFailing, ErrorCode: codeKeystoreUnavailable}
	var re *RefreshError
	if errors.As(err, &re) {
		s.ErrorCode = re.Code
		if !re.Temporary {
			s.State = stateNeedsReauthorization
		}
	}
	return s
}

// stateSeverity orders states from healthy to most in need of attention.
func stateSeverity(state string) int {
	switch state {
	case stateOK:
		return 0
	case stateExpiring:
		return 1
	default:
		return 2
	}
}

// mergeStatuses keeps one status per name, sorted by name: the one with the
// highest generation (the newest key set, which the other handlers adopt
// when they next use it) and, among equal generations, the least healthy.
func mergeStatuses(statuses []KeySetStatus) []KeySetStatus {
	byName := make(map[string]KeySetStatus, len(statuses))
	for _, s := range statuses {
		cur, ok := byName[s.Name]
		if !ok || s.Generation > cur.Generation ||
			(s.Generation == cur.Generation && stateSeverity(s.State) > stateSeverity(cur.State)) {
			byName[s.Name] = s
		}
	}
	out := make([]KeySetStatus, 0, len(byName))
	for _, s := range byName {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// validateOperations checks the options of operating the handler.
func (h *Handler) validateOperations() error {
	if h.Notify != "" {
		return validateNotifyURL(h.Notify)
	}
	return nil
}
