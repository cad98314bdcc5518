package runtime

import (
	"errors"
	"testing"
)

func TestSelf(t *testing.T) {
	t.Setenv(EnvID, "abc")
	t.Setenv(EnvJob, "j1")
	t.Setenv(EnvRank, "1")
	t.Setenv(EnvSize, "2")
	t.Setenv(EnvPeers, "10.0.0.1:20000,10.0.0.2:20001")
	id, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "abc" || id.Job != "j1" || id.Rank != 1 || id.Size != 2 || id.Peers[1] != "10.0.0.2:20001" {
		t.Fatalf("Self() = %+v", id)
	}
	for _, bad := range []struct{ k, v string }{{EnvRank, "x"}, {EnvRank, "2"}, {EnvSize, "0"}, {EnvPeers, "a:1"}} {
		t.Run(bad.k+"="+bad.v, func(t *testing.T) {
			t.Setenv(bad.k, bad.v)
			if _, err := Self(); err == nil {
				t.Fatalf("Self() accepted %s=%q", bad.k, bad.v)
			}
		})
	}
}

func TestRegisterOutsideMigrated(t *testing.T) {
	t.Setenv(EnvID, "")
	t.Setenv(EnvControl, "")
	if err := Register(Hooks{}); !errors.Is(err, ErrNotManaged) {
		t.Fatalf("Register outside migrated: %v, want ErrNotManaged", err)
	}
}
