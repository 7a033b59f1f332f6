package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/handshaked/handshaked/internal/authz"
)

// decoder decodes the kinds the manifests use, strictly: an unknown or
// duplicated field, or a value of the wrong type, is an error, as the API
// server's strict field validation makes it.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme, monv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// kustomize builds the kustomization in dir as kubectl kustomize does (the
// same library: kubectl 1.32 embeds kustomize v5.5.0, API v0.18.0) and
// decodes every object strictly.
func kustomize(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	require.NoError(t, err, "kustomize build %s", dir)
	var objs []runtime.Object
	for _, r := range resources.Resources() {
		y, err := r.AsYAML()
		require.NoError(t, err)
		obj, _, err := decoder.Decode(y, nil, nil)
		require.NoError(t, err, "%s/%s:\n%s", r.GetKind(), r.GetName(), y)
		objs = append(objs, obj)
	}
	return objs
}

// objects of one type from a build, by name.
func objectsOf[T runtime.Object](objs []runtime.Object) map[string]T {
	out := map[string]T{}
	for _, o := range objs {
		if v, ok := o.(T); ok {
			out[o.(interface{ GetName() string }).GetName()] = v
		}
	}
	return out
}

// TestStrictDecodingCatchesMistakes: a misspelt field, a string where a
// number goes, and a duplicated key are refused, so the manifest checks
// below cannot pass on a manifest the API server would refuse.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	for name, y := range map[string]string{
		"unknown field": "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {selectr: {a: b}}\n",
		"wrong type":    "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {minAvailable: [1]}\n",
		"duplicate":     "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountToken: false\nautomountServiceAccountToken: true\n",
		"unknown kind":  "apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n",
	} {
		_, _, err := decoder.Decode([]byte(y), nil, nil)
		assert.Error(t, err, name)
	}
}

// TestKubernetesBase: the base builds on a fresh clone and decodes
// strictly; its pieces fit together (selectors, port names, probes on the
// health port, mounts at the image's paths) and follow the rules of the
// issue: one replica on a volume, non-root, read-only root, no privilege,
// requests and limits, a PDB, a NetworkPolicy, a ServiceMonitor.
func TestKubernetesBase(t *testing.T) {
	objs := kustomize(t, "kubernetes/base")
	sts := objectsOf[*appsv1.StatefulSet](objs)["handshaked"]
	require.NotNil(t, sts, "no StatefulSet handshaked")
	svc := objectsOf[*corev1.Service](objs)["handshaked"]
	require.NotNil(t, svc, "no Service handshaked")
	pdb := objectsOf[*policyv1.PodDisruptionBudget](objs)["handshaked"]
	require.NotNil(t, pdb, "no PodDisruptionBudget")
	np := objectsOf[*networkingv1.NetworkPolicy](objs)["handshaked"]
	require.NotNil(t, np, "no NetworkPolicy")
	sm := objectsOf[*monv1.ServiceMonitor](objs)["handshaked"]
	require.NotNil(t, sm, "no ServiceMonitor")
	policy := objectsOf[*corev1.ConfigMap](objs)["handshaked-policy"]
	require.NotNil(t, policy, "no policy ConfigMap")
	assert.Empty(t, objectsOf[*corev1.Secret](objs), "the base holds no secret")

	pod := sts.Spec.Template
	podLabels := labels.Set(pod.Labels)
	t.Run("one replica on a volume", func(t *testing.T) {
		require.NotNil(t, sts.Spec.Replicas)
		assert.EqualValues(t, 1, *sts.Spec.Replicas, "bbolt has one writer: several replicas need the etcd store")
		require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
		assert.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, sts.Spec.VolumeClaimTemplates[0].Spec.AccessModes)
		sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
		require.NoError(t, err)
		assert.True(t, sel.Matches(podLabels), "the StatefulSet selects its pods")
	})

	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	env := imageEnv(t)
	t.Run("ports are the image's", func(t *testing.T) {
		for name, setting := range map[string]string{"grpc": "HANDSHAKED_GRPC_ADDR", "https": "HANDSHAKED_HTTP_ADDR", "health": "HANDSHAKED_HEALTH_ADDR"} {
			assert.Equal(t, env[setting], fmt.Sprintf(":%d", ports[name]), "port %s is %s of the image", name, setting)
		}
	})
	t.Run("gRPC health probes on the health port", func(t *testing.T) {
		for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			require.NotNil(t, p, "no %s probe", name)
			require.NotNil(t, p.GRPC, "the %s probe is not a gRPC probe", name)
			assert.Equal(t, ports["health"], p.GRPC.Port, "the %s probe asks the plain-text health port (the kubelet's gRPC probe speaks no TLS)", name)
		}
		// Readiness follows key use (NOT_SERVING while the replica refuses
		// it); startup and liveness ask for the process, which recovers by itself.
		require.NotNil(t, c.ReadinessProbe.GRPC.Service)
		assert.Equal(t, "handshake.v1.KeyVault", *c.ReadinessProbe.GRPC.Service)
		for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe} {
			assert.Empty(t, p.GRPC.Service, "the %s probe asks the server's own health", name)
		}
	})
	t.Run("requests and limits", func(t *testing.T) {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
			assert.False(t, req.IsZero(), "no %s request", r)
			assert.False(t, lim.IsZero(), "no %s limit", r)
			assert.LessOrEqual(t, req.Cmp(lim), 0, "%s: the request exceeds the limit", r)
		}
	})
	t.Run("security context", func(t *testing.T) {
		ps := pod.Spec.SecurityContext
		require.NotNil(t, ps)
		assert.True(t, *ps.RunAsNonRoot)
		assert.NotZero(t, *ps.RunAsUser)
		assert.NotNil(t, ps.FSGroup, "the Secret files are group-readable only; the fsGroup lets the service read them")
		assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, ps.SeccompProfile.Type)
		cs := c.SecurityContext
		require.NotNil(t, cs)
		assert.True(t, *cs.ReadOnlyRootFilesystem)
		assert.False(t, *cs.AllowPrivilegeEscalation)
		assert.False(t, *cs.Privileged)
		assert.Equal(t, []corev1.Capability{"ALL"}, cs.Capabilities.Drop)
		assert.False(t, *pod.Spec.AutomountServiceAccountToken, "the service never calls the Kubernetes API")
	})
	t.Run("mounts at the image's paths", func(t *testing.T) {
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m.MountPath
		}
		volumes := map[string]corev1.Volume{}
		for _, v := range pod.Spec.Volumes {
			volumes[v.Name] = v
		}
		for name, setting := range map[string]string{"data": "HANDSHAKED_DATA_DIR", "kek": "HANDSHAKED_KEK_FILE", "tls": "HANDSHAKED_TLS_CERT", "client-ca": "HANDSHAKED_CLIENT_CA", "policy": "HANDSHAKED_POLICY"} {
			require.Contains(t, mounts, name)
			assert.True(t, env[setting] == mounts[name] || filepath.Dir(env[setting]) == mounts[name], "%s=%s is not in the %s mount at %s", setting, env[setting], name, mounts[name])
		}
		assert.Equal(t, filepath.Dir(env["HANDSHAKED_TLS_KEY"]), mounts["tls"])
		for _, name := range []string{"kek", "tls", "client-ca"} {
			require.NotNil(t, volumes[name].Secret, "%s is a Secret", name)
			require.NotNil(t, volumes[name].Secret.DefaultMode)
			assert.EqualValues(t, 0o440, *volumes[name].Secret.DefaultMode, "%s: readable by the group, not the world (the service refuses world-readable keys)", name)
		}
		require.NotNil(t, volumes["policy"].ConfigMap)
		assert.Equal(t, policy.Name, volumes["policy"].ConfigMap.Name)
		for _, m := range c.VolumeMounts {
			assert.Empty(t, m.SubPath, "%s: a subPath mount never sees an update, so no reload", m.Name)
		}
	})
	t.Run("the env sets real flags", func(t *testing.T) {
		flags := handshakedFlags(t, filepath.Join(release(t), "handshaked"))
		for _, e := range c.Env {
			assert.True(t, flags[envFlag(e.Name)], "%s sets no handshaked flag", e.Name)
		}
	})
	t.Run("the policy parses", func(t *testing.T) {
		_, err := authz.Parse([]byte(policy.Data["policy.json"]))
		assert.NoError(t, err)
	})
	t.Run("Service", func(t *testing.T) {
		assert.True(t, labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels), "the Service selects the pods")
		for _, p := range svc.Spec.Ports {
			assert.Contains(t, ports, p.TargetPort.String(), "Service port %s targets a container port", p.Name)
		}
	})
	t.Run("PodDisruptionBudget", func(t *testing.T) {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		require.NoError(t, err)
		assert.True(t, sel.Matches(podLabels))
		assert.Equal(t, intstr.FromInt32(1), *pdb.Spec.MinAvailable)
	})
	t.Run("NetworkPolicy", func(t *testing.T) {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		require.NoError(t, err)
		assert.True(t, sel.Matches(podLabels))
		assert.ElementsMatch(t, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}, np.Spec.PolicyTypes)
		assert.Empty(t, np.Spec.Egress, "the service calls no one")
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				assert.Contains(t, ports, p.Port.String(), "NetworkPolicy port %s is a container port", p.Port)
				assert.NotEqual(t, "health", p.Port.String())
			}
		}
	})
	t.Run("ServiceMonitor", func(t *testing.T) {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		require.NoError(t, err)
		assert.True(t, sel.Matches(labels.Set(svc.Labels)), "the ServiceMonitor selects the Service")
		require.Len(t, sm.Spec.Endpoints, 1)
		ep := sm.Spec.Endpoints[0]
		assert.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }), "endpoint port %q is a Service port", ep.Port)
		assert.Equal(t, "/metrics", ep.Path)
		assert.Equal(t, "https", ep.Scheme)
		require.NotNil(t, ep.TLSConfig)
		assert.Equal(t, "handshaked-tls", ep.TLSConfig.CA.Secret.Name, "Prometheus trusts the CA of the service's certificate")
	})
}

// TestKubernetesSecretsOverlay: the secrets overlay makes the three Secrets
// the base mounts, with the keys its volumes name, from local files.
func TestKubernetesSecretsOverlay(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.CopyFS(dir, os.DirFS("kubernetes")))
	pki := newTestPKI(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	for name, data := range map[string][]byte{
		"kek": []byte(hex.EncodeToString(kek)), "tls.crt": pki.serverCert, "tls.key": pki.serverKey,
		"ca.crt": pki.caCert, "client-ca.crt": pki.caCert,
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "secrets", name), data, 0o600))
	}
	objs := kustomize(t, filepath.Join(dir, "secrets"))
	secrets := objectsOf[*corev1.Secret](objs)
	sts := objectsOf[*appsv1.StatefulSet](objs)["handshaked"]
	require.NotNil(t, sts)
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		s, ok := secrets[v.Secret.SecretName]
		if !assert.True(t, ok, "volume %s mounts Secret %s, which the overlay does not make", v.Name, v.Secret.SecretName) {
			continue
		}
		for _, item := range v.Secret.Items {
			assert.Contains(t, s.Data, item.Key, "Secret %s has no key %s", s.Name, item.Key)
		}
	}
	assert.Equal(t, corev1.SecretTypeTLS, secrets["handshaked-tls"].Type)
	assert.Contains(t, secrets["handshaked-tls"].Data, "ca.crt", "the ServiceMonitor's CA")
	assert.Contains(t, secrets["handshaked-client-ca"].Data, "ca.crt", "HANDSHAKED_CLIENT_CA names ca.crt")
	assert.Len(t, secrets["handshaked-kek"].Data["kek"], 64)
}

// testPKI is a CA and a server certificate it issued, for "handshaked",
// "localhost" and 127.0.0.1.
type testPKI struct {
	caCert, serverCert, serverKey []byte
	pool                          *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "deploy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "handshaked"},
		DNSNames: []string{"handshaked", "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{
		caCert:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		serverCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		serverKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pool:       pool,
	}
}
