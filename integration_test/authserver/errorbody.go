package authserver

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/ory/fosite"
)

// writeAccessError answers a refused token request as fosite does, or, when
// profile says so (ErrorsWithStatusOK, ErrorCodes), as the provider it
// stands for does: with HTTP 200, its own error code, or both.
func (s *Server) writeAccessError(ctx context.Context, w http.ResponseWriter, requester fosite.AccessRequester, err error, profile Profile) {
	if !profile.ErrorsWithStatusOK && len(profile.ErrorCodes) == 0 {
		s.provider.WriteAccessError(ctx, w, requester, err)
		return
	}
	rfc := fosite.ErrorToRFC6749Error(err)
	code, status := rfc.ErrorField, rfc.StatusCode()
	if renamed := profile.ErrorCodes[code]; renamed != "" {
		code = renamed
	}
	body := map[string]any{"error": code, "error_description": rfc.GetDescription()}
	if profile.ErrorsWithStatusOK {
		status = http.StatusOK
		body["ok"] = false
	}
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
