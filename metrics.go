package oauth2upstream

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Metric names are caddy_oauth2_upstream_*. The key_set label takes only
// names that exist in the keystore (a request that selects an unknown name
// gets a problem before anything is counted), which bounds its
// cardinality.
const (
	metricsNamespace = "caddy"
	metricsSubsystem = "oauth2_upstream"
)

// Outcomes of a trigger status (the replays_total outcome label).
const (
	replayReplayed      = "replayed"
	replayNotReplayable = "not_replayable" // the request body, or the trigger answer's, was too large to keep
	replayRefreshFailed = "refresh_failed"
	replayTooRecent     = "too_recent" // the rejected token was younger than min_refresh_interval: no grant
)

// Results of a grant (the grants_total result label).
const (
	grantResultOK    = "ok"
	grantResultError = "error"
)

// upstreamMetrics are the collectors of one metrics registry. Every handler
// of a config builds its own, and registration hands back the collectors
// the first handler registered, so they all count into the same series.
// It is the credential.Observer that counts grants and keystore failures.
type upstreamMetrics struct {
	grants         *prometheus.CounterVec
	grantDuration  *prometheus.HistogramVec
	replays        *prometheus.CounterVec
	keystoreErrors *prometheus.CounterVec
}

func newUpstreamMetrics(registry prometheus.Registerer, handlers *live.Registry, config live.Config) (*upstreamMetrics, error) {
	m := &upstreamMetrics{
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "grants_total",
			Help: "Grants made at the token endpoint, by key set and result (ok, error).",
		}, []string{"key_set", "result"}),
		grantDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "grant_duration_seconds",
			Help:    "How long grants at the token endpoint took, by key set.",
			Buckets: prometheus.DefBuckets,
		}, []string{"key_set"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "replays_total",
			Help: "Requests the upstream rejected with a trigger status, by key set and outcome (replayed, not_replayable, refresh_failed, too_recent).",
		}, []string{"key_set", "outcome"}),
		keystoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "keystore_errors_total",
			Help: "Failed keystore operations, by operation (lock, load, save).",
		}, []string{"operation"}),
	}
	var err error
	if m.grants, err = register(registry, m.grants); err != nil {
		return nil, err
	}
	if m.grantDuration, err = register(registry, m.grantDuration); err != nil {
		return nil, err
	}
	if m.replays, err = register(registry, m.replays); err != nil {
		return nil, err
	}
	if m.keystoreErrors, err = register(registry, m.keystoreErrors); err != nil {
		return nil, err
	}
	if _, err := register(registry, newKeySetCollector(handlers, config)); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// the same descriptors: several handlers share a config's registry.
func register[C prometheus.Collector](registry prometheus.Registerer, c C) (C, error) {
	err := registry.Register(c)
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		existing, ok := already.ExistingCollector.(C)
		if !ok {
			return c, fmt.Errorf("registering metrics: a %T is already registered under the same name", already.ExistingCollector)
		}
		return existing, nil
	}
	if err != nil {
		return c, fmt.Errorf("registering metrics: %w", err)
	}
	return c, nil
}

// GrantDone implements credential.Observer.
func (m *upstreamMetrics) GrantDone(keySet string, err error, took time.Duration) {
	result := grantResultOK
	if err != nil {
		result = grantResultError
	}
	m.grants.WithLabelValues(keySet, result).Inc()
	m.grantDuration.WithLabelValues(keySet).Observe(took.Seconds())
}

// KeySetStored implements credential.Observer. It needs no counting: the
// expiry gauge reads the key sets in use when it is scraped.
func (m *upstreamMetrics) KeySetStored(*keystore.KeySet) {}

// KeystoreFailed implements credential.Observer.
func (m *upstreamMetrics) KeystoreFailed(operation string) {
	m.keystoreErrors.WithLabelValues(operation).Inc()
}

// KeySetStateChanged implements credential.Observer. It needs no counting:
// the state gauge reads the key sets' states when it is scraped.
func (m *upstreamMetrics) KeySetStateChanged(credential.StateChange) {}

// KeySetRefreshExpiring implements credential.Observer. It needs no
// counting: the refresh_token_expiring gauge reads the key sets' statuses
// when it is scraped.
func (m *upstreamMetrics) KeySetRefreshExpiring(credential.RefreshWarning) {}

// keySetStates are the values of the key_set_state gauge's state label.
var keySetStates = []string{
	credential.StateOK, credential.StateExpiring, credential.StateFailing,
	credential.StateNeedsReauthorization, credential.StateKeystoreFailing,
}

// keySetCollector is the gauges that describe the key sets in use:
// caddy_oauth2_upstream_token_expiry_timestamp_seconds,
// caddy_oauth2_upstream_key_set_state and, for the key sets whose provider
// announced when their refresh token expires,
// caddy_oauth2_upstream_refresh_token_expiry_timestamp_seconds and
// caddy_oauth2_upstream_refresh_token_expiring. It reads, when scraped, the key set
// each handler of its config has in use, so the values follow every change
// however it came (a grant, an admin PUT, a key set adopted from another
// replica, the first load, time passing). Key sets whose expiry is unknown
// have no expiry sample.
type keySetCollector struct {
	handlers *live.Registry
	config   live.Config
	expiry   *prometheus.Desc
	state    *prometheus.Desc

	refreshExpiry   *prometheus.Desc
	refreshExpiring *prometheus.Desc
}

func newKeySetCollector(handlers *live.Registry, config live.Config) *keySetCollector {
	return &keySetCollector{
		handlers: handlers,
		config:   config,
		expiry: prometheus.NewDesc(
			prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "token_expiry_timestamp_seconds"),
			"When the access token in use expires, in seconds since the Unix epoch, by key set.",
			[]string{"key_set"}, nil),
		state: prometheus.NewDesc(
			prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "key_set_state"),
			"1 for the state each key set is in, 0 for the others (ok, expiring, failing, needs_reauthorization, keystore_failing).",
			[]string{"key_set", "state"}, nil),
		refreshExpiry: prometheus.NewDesc(
			prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "refresh_token_expiry_timestamp_seconds"),
			"When the refresh token in use expires, in seconds since the Unix epoch, by key set; only where the provider announced it.",
			[]string{"key_set"}, nil),
		refreshExpiring: prometheus.NewDesc(
			prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "refresh_token_expiring"),
			"1 when the key set's refresh token expires within reauthorize_warning and no refresh will save it (the account needs reauthorization), else 0; only where the provider announced the expiry.",
			[]string{"key_set"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *keySetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.expiry
	ch <- c.state
	ch <- c.refreshExpiry
	ch <- c.refreshExpiring
}

// Collect implements prometheus.Collector. A key set several handlers use
// reports its newest generation, and the least healthy state among those
// that have it (credential.MergeStatuses).
func (c *keySetCollector) Collect(ch chan<- prometheus.Metric) {
	var all []credential.Status
	for _, h := range c.handlers.HandlersOf(c.config) {
		all = append(all, h.Engine.Statuses()...)
	}
	for _, s := range credential.MergeStatuses(all) {
		for _, state := range keySetStates {
			value := 0.0
			if s.State == state {
				value = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, value, s.Name, state)
		}
		if s.Expiry != nil {
			ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, unixSeconds(*s.Expiry), s.Name)
		}
		if s.RefreshExpiry != nil {
			ch <- prometheus.MustNewConstMetric(c.refreshExpiry, prometheus.GaugeValue, unixSeconds(*s.RefreshExpiry), s.Name)
			expiring := 0.0
			if s.RefreshExpiring {
				expiring = 1
			}
			ch <- prometheus.MustNewConstMetric(c.refreshExpiring, prometheus.GaugeValue, expiring, s.Name)
		}
	}
}

// unixSeconds is t in seconds since the Unix epoch.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / float64(time.Second) }

// Interface guard
var _ credential.Observer = (*upstreamMetrics)(nil)
