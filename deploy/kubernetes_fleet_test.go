package deploy

import (
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestKubernetesFleetOverlay: the fleet overlay runs three replicas of the
// base on etcd: its settings are real flags, the etcd client files are
// mounted where they point, group-readable only; no volume claim (the store
// is etcd); the pods spread over nodes and a drain keeps two; the network
// policy lets them reach etcd's port and DNS; a headless Service gives one
// address per replica for the edges that balance over them.
func TestKubernetesFleetOverlay(t *testing.T) {
	objs := kustomize(t, "kubernetes/fleet")
	sts := objectsOf[*appsv1.StatefulSet](objs)["handshaked"]
	require.NotNil(t, sts, "no StatefulSet handshaked")
	pdb := objectsOf[*policyv1.PodDisruptionBudget](objs)["handshaked"]
	require.NotNil(t, pdb)
	np := objectsOf[*networkingv1.NetworkPolicy](objs)["handshaked"]
	require.NotNil(t, np)
	headless := objectsOf[*corev1.Service](objs)["handshaked-replicas"]
	require.NotNil(t, headless, "no headless Service for the edges")
	pod := sts.Spec.Template
	podLabels := labels.Set(pod.Labels)
	require.NotNil(t, sts.Spec.Replicas)
	replicas := int(*sts.Spec.Replicas)
	assert.Equal(t, 3, replicas)
	assert.Equal(t, appsv1.ParallelPodManagement, sts.Spec.PodManagementPolicy)
	assert.Empty(t, sts.Spec.VolumeClaimTemplates, "the store is etcd: no volume claim")

	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	t.Run("the env sets real flags", func(t *testing.T) {
		flags := handshakedFlags(t, filepath.Join(release(t), "handshaked"))
		for _, e := range c.Env {
			assert.True(t, flags[envFlag(e.Name)], "%s sets no handshaked flag", e.Name)
		}
	})
	t.Run("etcd", func(t *testing.T) {
		endpoints := strings.Split(env["HANDSHAKED_ETCD_ENDPOINTS"], ",")
		assert.GreaterOrEqual(t, len(endpoints), 3, "an etcd cluster of 3 or 5 members, all listed")
		for _, e := range endpoints {
			u, err := url.Parse(e)
			require.NoError(t, err)
			assert.Equal(t, "https", u.Scheme, "%s: etcd over TLS", e)
		}
		assert.NotEmpty(t, env["HANDSHAKED_ETCD_PREFIX"], "a prefix per deployment")
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range pod.Spec.Volumes {
			volumes[v.Name] = v
		}
		m, ok := mounts["etcd-client"]
		require.True(t, ok, "no etcd-client mount")
		assert.True(t, m.ReadOnly)
		for _, setting := range []string{"HANDSHAKED_ETCD_CA_FILE", "HANDSHAKED_ETCD_CERT_FILE", "HANDSHAKED_ETCD_KEY_FILE"} {
			assert.Equal(t, m.MountPath, filepath.Dir(env[setting]), "%s=%s is not in the etcd-client mount", setting, env[setting])
		}
		s := volumes["etcd-client"].Secret
		require.NotNil(t, s, "etcd-client is a Secret")
		require.NotNil(t, s.DefaultMode)
		assert.EqualValues(t, 0o440, *s.DefaultMode, "readable by the group, not the world")
		require.NotNil(t, volumes["data"].EmptyDir, "the data directory is the pod's own")
		require.NotNil(t, volumes["kek"].Secret, "every replica mounts the one KEK")
	})
	t.Run("spread, and a drain keeps two", func(t *testing.T) {
		require.Len(t, pod.Spec.TopologySpreadConstraints, 1)
		tsc := pod.Spec.TopologySpreadConstraints[0]
		assert.Equal(t, corev1.LabelHostname, tsc.TopologyKey)
		sel, err := metav1.LabelSelectorAsSelector(tsc.LabelSelector)
		require.NoError(t, err)
		assert.True(t, sel.Matches(podLabels), "the spread counts the replicas")
		require.NotNil(t, pdb.Spec.MinAvailable)
		assert.Equal(t, intstr.FromInt32(int32(replicas-1)), *pdb.Spec.MinAvailable)
	})
	t.Run("egress to etcd and DNS only", func(t *testing.T) {
		etcdPort := 0
		for _, e := range strings.Split(env["HANDSHAKED_ETCD_ENDPOINTS"], ",") {
			u, err := url.Parse(e)
			require.NoError(t, err)
			etcdPort, err = strconv.Atoi(u.Port())
			require.NoError(t, err)
		}
		var ports []string
		for _, rule := range np.Spec.Egress {
			for _, p := range rule.Ports {
				ports = append(ports, string(*p.Protocol)+"/"+p.Port.String())
			}
		}
		assert.ElementsMatch(t, []string{"TCP/" + strconv.Itoa(etcdPort), "UDP/53", "TCP/53"}, ports)
		assert.NotEmpty(t, np.Spec.Ingress, "the base's ingress rules stay")
	})
	t.Run("headless Service", func(t *testing.T) {
		assert.Equal(t, corev1.ClusterIPNone, headless.Spec.ClusterIP)
		assert.True(t, labels.SelectorFromSet(headless.Spec.Selector).Matches(podLabels))
		assert.Equal(t, headless.Name, sts.Spec.ServiceName)
		require.Len(t, headless.Spec.Ports, 1)
		assert.Equal(t, "grpc", headless.Spec.Ports[0].TargetPort.String())
	})
}
