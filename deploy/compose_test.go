package deploy

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCompose: deploy/compose/compose.yaml loads and validates with
// compose-go (the loader Docker Compose uses, with the Compose schema), and
// runs the image as the Kubernetes base does: read-only root, the image's
// non-root user, no capabilities, the key store on a volume and the key
// material at the paths the image's settings name, health by "handshaked
// health".
func TestCompose(t *testing.T) {
	path, err := filepath.Abs("compose/compose.yaml")
	require.NoError(t, err)
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path}},
		Environment: types.Mapping{},
	})
	require.NoError(t, err)
	svc, err := project.GetService("handshaked")
	require.NoError(t, err)

	env := imageEnv(t)
	var user string
	for _, in := range readDockerfile(t) {
		if in.cmd == "USER" {
			user = in.args
		}
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	require.NotNil(t, svc.Build)
	assert.Equal(t, root, svc.Build.Context, "the build context is the repository root")
	assert.Equal(t, "deploy/Dockerfile", svc.Build.Dockerfile)
	assert.True(t, svc.ReadOnly, "read-only root file system")
	assert.Equal(t, user, svc.User, "the image's user")
	assert.Equal(t, []string{"ALL"}, svc.CapDrop)
	assert.Contains(t, svc.SecurityOpt, "no-new-privileges:true")
	require.NotNil(t, svc.HealthCheck)
	assert.Equal(t, types.HealthCheckTest{"CMD", "/handshaked", "health"}, svc.HealthCheck.Test)

	mounts := map[string]types.ServiceVolumeConfig{}
	for _, v := range svc.Volumes {
		mounts[v.Target] = v
	}
	require.Contains(t, mounts, env["HANDSHAKED_DATA_DIR"], "the key store is a volume")
	assert.Equal(t, types.VolumeTypeVolume, mounts[env["HANDSHAKED_DATA_DIR"]].Type)
	require.Contains(t, mounts, env["HANDSHAKED_POLICY"])
	assert.True(t, mounts[env["HANDSHAKED_POLICY"]].ReadOnly)
	assert.FileExists(t, mounts[env["HANDSHAKED_POLICY"]].Source, "the policy the Kubernetes base ships")

	targets := map[string]bool{}
	for _, s := range svc.Secrets {
		targets[s.Target] = true
		_, ok := project.Secrets[s.Source]
		assert.True(t, ok, "secret %s is declared", s.Source)
	}
	for _, k := range []string{"HANDSHAKED_KEK_FILE", "HANDSHAKED_TLS_CERT", "HANDSHAKED_TLS_KEY", "HANDSHAKED_CLIENT_CA"} {
		assert.True(t, targets[env[k]], "%s=%s is mounted from a secret file", k, env[k])
	}
	for name := range svc.Environment {
		assert.True(t, handshakedFlags(t, filepath.Join(release(t), "handshaked"))[envFlag(name)], "%s sets no handshaked flag", name)
	}
	assert.Equal(t, "false", *svc.Environment["HANDSHAKED_INIT"], "a new vault only when asked for")
}
