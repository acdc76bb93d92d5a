package keystore

import (
	"reflect"
	"testing"
	"time"
)

// TestKeySetNext: the next generation keeps the client the key set is bound
// to (an unbound document stays unbound until its writer binds it), in a
// copy, so changing one document's binding never changes the other's.
func TestKeySetNext(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		client *Binding
	}{
		{"unbound", nil},
		{"bound", &Binding{TokenURL: "https://login.example/token", ClientID: "client-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ks := &KeySet{Name: "sf", Generation: 3, Token: Token{}, Client: tt.client}
			ks.Token.SetString(FieldRefreshToken, "rt-3")
			response := Token{}
			response.SetString(FieldAccessToken, "at-4")
			next := ks.Next(response, now.Add(time.Hour), now)
			if next.Generation != 4 || next.Token.RefreshToken() != "rt-3" {
				t.Errorf("Next() = generation %d refresh %q; want 4 rt-3", next.Generation, next.Token.RefreshToken())
			}
			if !reflect.DeepEqual(next.Client, tt.client) {
				t.Errorf("Next().Client = %+v; want %+v", next.Client, tt.client)
			}
			if tt.client != nil && next.Client == tt.client {
				t.Errorf("Next().Client shares the previous document's Binding; want a copy")
			}
		})
	}
}
