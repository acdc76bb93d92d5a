package connect

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// keySetRow is one key set on the status page. It holds no token value.
type keySetRow struct {
	Name            string
	State           string
	Meaning         string // the state in words, and what to do (credential.DescribeState)
	Provider        string // "" when the handlers name none
	Generation      int64
	Stored          bool // a generation is stored (the button says Reconnect)
	HasRefreshToken bool
	ErrorCode       string
	LastResult      string
	UpdatedAt       time.Time
	LastRefresh     time.Time
	Expiry          time.Time
	// When the engine acts by itself next; zero when unknown or none.
	ProactiveRefresh time.Time
	Keepalive        time.Time
	RetryAt          time.Time
	Connect          bool // its handlers use the refresh_token grant: Connect is offered
	Refresh          bool // Refresh now is offered
}

// listKeySets returns the key sets the page's handlers serve, by name, at
// most limit of those whose names sort after after, and whether more
// follow: each handler's configured key set, those its engine has loaded,
// and every stored one it may serve (when its keystore can list them).
// warnings say what could not be listed.
func (c *Connect) listKeySets(ctx context.Context, after string, limit int) (rows []keySetRow, more bool, warnings []string) {
	handlers := c.registry.PageHandlers(c.page)
	names := make(map[string]bool)
	for _, h := range handlers {
		if !h.KeySets.PerRequest() && h.KeySets.Name > after {
			names[h.KeySets.Name] = true
		}
		for _, s := range h.Engine.StatusesAfter(after, limit+1) {
			names[s.Name] = true
		}
		lister, ok := h.Engine.Store().(keystore.Lister)
		if !ok {
			continue
		}
		stored, err := lister.Names(ctx)
		if err != nil {
			c.logger.Warn("listing the keystore for the connect page", zap.Error(err))
			warnings = append(warnings, fmt.Sprintf("A keystore could not be listed (%v): the key sets it holds may be missing here.", err))
			continue
		}
		for _, name := range stored {
			if name > after && h.KeySets.Serves(name) {
				names[name] = true
			}
		}
	}
	sorted := slices.Sorted(maps.Keys(names))
	if len(sorted) > limit {
		sorted, more = sorted[:limit], true
	}
	for _, name := range sorted {
		if row, ok := c.row(ctx, name, handlers); ok {
			rows = append(rows, row)
		}
	}
	return rows, more, slices.Compact(warnings)
}

// row works out the row of key set name from the handlers that serve it:
// the newest generation and, among equal ones, the least healthy state
// (credential.MergeStatuses), with the schedule of a handler that has it
// loaded. ok is false when no handler has it (a placeholder key_set's name
// that is not stored).
func (c *Connect) row(ctx context.Context, name string, handlers []*live.Handler) (row keySetRow, ok bool) {
	var statuses []credential.Status
	var schedule credential.Schedule
	for _, h := range live.Serving(handlers, name) {
		s, ok := h.Status(ctx, name)
		if !ok {
			continue
		}
		statuses = append(statuses, s)
		if sch, loaded := h.Engine.Schedule(name); loaded && schedule == (credential.Schedule{}) {
			schedule = sch
		}
		row.Connect = row.Connect || h.Grant == credential.GrantRefreshToken
		row.Refresh = row.Refresh || h.Grant != credential.GrantRefreshToken
	}
	if len(statuses) == 0 {
		return row, false
	}
	s := credential.MergeStatuses(statuses)[0]
	row.Name, row.State, row.Generation, row.Stored = s.Name, s.State, s.Generation, s.Generation > 0
	row.Meaning, row.Provider = credential.DescribeState(s.State, s.ErrorCode), s.Provider
	row.HasRefreshToken, row.ErrorCode, row.LastResult = s.HasRefreshToken, s.ErrorCode, s.LastResult
	row.LastRefresh, row.Expiry = timeOrZero(s.LastRefresh), timeOrZero(s.Expiry)
	row.UpdatedAt, row.ProactiveRefresh = schedule.UpdatedAt, schedule.ProactiveRefresh
	row.Keepalive, row.RetryAt = schedule.Keepalive, schedule.RetryAt
	row.Refresh = row.Refresh || s.HasRefreshToken
	return row, true
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
