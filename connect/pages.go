package connect

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// The connect page's templates and style sheet: plain server-rendered
// HTML, no script.
//
//go:embed pages.html style.css
var pageFiles embed.FS

var (
	pageTemplates = template.Must(template.New("pages").Funcs(template.FuncMap{"at": formatAt}).
			ParseFS(pageFiles, "pages.html"))
	pageStyle = template.CSS(mustRead(pageFiles, "style.css"))
	// styleHash admits the inline <style> element and nothing else
	// (CSP Level 3 hash-source): the page loads no script at all.
	styleHash = func() string {
		sum := sha256.Sum256([]byte(pageStyle))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}()
)

func mustRead(fsys embed.FS, name string) string {
	b, err := fsys.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// setPageHeaders sets what every answer of the connect page carries: a
// Content-Security-Policy that allows no script, no resource but the
// inline style sheet, forms sent only to this page (and the provider, which
// the Connect form redirects to: browsers apply form-action to redirects),
// no framing; and no caching, since the pages describe credentials.
func setPageHeaders(h http.Header, authorizeOrigin string) {
	formAction := "'self'"
	if authorizeOrigin != "" {
		formAction += " " + authorizeOrigin
	}
	h.Set("Content-Security-Policy", "default-src 'none'; style-src "+styleHash+
		"; form-action "+formAction+"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// The redirect back carries the code in its URL.
	h.Set("Referrer-Policy", "no-referrer")
}

// pageData is what the templates render.
type pageData struct {
	Title    string
	Style    template.CSS
	CSRF     string
	Now      time.Time
	Notice   string
	Warnings []string
	Rows     []keySetRow
	After    string
	Next     string
	KeySet   string
	Provider string
	Detail   string
}

// render writes template name with status.
func (c *Connect) render(w http.ResponseWriter, status int, name string, data pageData) {
	data.Style = pageStyle
	data.Now = c.now()
	var body bytes.Buffer
	if err := pageTemplates.ExecuteTemplate(&body, name, data); err != nil {
		c.logger.Error("rendering the connect page", zap.String("template", name), zap.Error(err))
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(status)
	w.Write(body.Bytes())
}

// message answers a page that says one thing: an error, mostly.
func (c *Connect) message(w http.ResponseWriter, _ *http.Request, status int, title, detail, keySet string) {
	c.render(w, status, "message", pageData{Title: title, Detail: detail, KeySet: keySet})
}

// failure answers a failed grant or keystore operation as the handler does:
// 503 when it may pass, 502 when a person must act.
func (c *Connect) failure(w http.ResponseWriter, r *http.Request, title string, err error, keySet string) {
	status := http.StatusInternalServerError
	if errors.As(err, new(*credential.Error)) {
		status, _ = answer.FailureStatus(w.Header(), err)
	}
	c.message(w, r, status, title, err.Error(), keySet)
}

// statusPage lists the key sets a page at a time, by name.
func (c *Connect) statusPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, limit, err := live.ParsePage(q)
	if err != nil {
		c.message(w, r, http.StatusBadRequest, "Bad page", err.Error(), "")
		return
	}
	rows, more, warnings := c.listKeySets(r.Context(), after, limit)
	data := pageData{Title: "Key sets", CSRF: c.csrfToken(w, r), Rows: rows, After: after, Warnings: warnings}
	if more {
		data.Next = "/?" + url.Values{"after": {rows[len(rows)-1].Name}, "limit": {strconv.Itoa(limit)}}.Encode()
	}
	if name := q.Get("connected"); keystore.ValidateName(name) == nil {
		data.Notice = fmt.Sprintf("Connected %s.", name)
	} else if name := q.Get("refreshed"); keystore.ValidateName(name) == nil {
		data.Notice = fmt.Sprintf("Refreshed %s.", name)
	}
	c.render(w, http.StatusOK, "status", data)
}

// confirmPage shows the Connect button of one key set: what the
// connect-url command links to.
func (c *Connect) confirmPage(w http.ResponseWriter, r *http.Request, name string) {
	handlers := c.serving(name)
	if len(handlers) == 0 {
		c.message(w, r, http.StatusNotFound, "Unknown key set", fmt.Sprintf("No oauth2_upstream handler of this page can use key set %q.", name), name)
		return
	}
	if _, err := connectable(name, handlers); err != nil {
		c.message(w, r, http.StatusConflict, "Cannot connect", err.Error(), name)
		return
	}
	c.render(w, http.StatusOK, "confirm", pageData{Title: "Connect " + name, CSRF: c.csrfToken(w, r), KeySet: name, Provider: c.authorizeOrigin})
}

// refreshNow makes a grant for key set name now, once per keystore, and
// shows the status page.
func (c *Connect) refreshNow(w http.ResponseWriter, r *http.Request, name string) {
	handlers := c.postFor(w, r, name)
	if handlers == nil {
		return
	}
	ks, err := live.ForceRefresh(r.Context(), name, handlers)
	if err != nil {
		c.failure(w, r, "Not refreshed", err, name)
		return
	}
	if ks == nil {
		c.message(w, r, http.StatusNotFound, "Unknown key set", fmt.Sprintf("No keystore of this page's handlers holds key set %q: connect it first.", name), name)
		return
	}
	c.logger.Info("refreshed key set from the connect page", zap.String("key_set", name), zap.Int64("generation", ks.Generation))
	http.Redirect(w, r, "/?"+url.Values{"refreshed": {name}}.Encode(), http.StatusSeeOther)
}

// formatAt shows t in UTC and how far it is from now; nothing for the zero
// time.
func formatAt(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now).Round(time.Second)
	rel := "now"
	switch {
	case d > 0:
		rel = "in " + shortDuration(d)
	case d < 0:
		rel = shortDuration(-d) + " ago"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + rel + ")"
}

// shortDuration is d in its largest whole unit or two: "3d 4h", "5m 2s".
func shortDuration(d time.Duration) string {
	days, hours := int(d/(24*time.Hour)), int(d/time.Hour)%24
	minutes, seconds := int(d/time.Minute)%60, int(d/time.Second)%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd %dh", days, hours)
	case hours > 0:
		return fmt.Sprintf("%dh %dm", hours, minutes)
	case minutes > 0:
		return fmt.Sprintf("%dm %ds", minutes, seconds)
	}
	return fmt.Sprintf("%ds", seconds)
}
