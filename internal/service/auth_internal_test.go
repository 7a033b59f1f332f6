package service

import (
	"testing"

	"google.golang.org/grpc"

	pb "github.com/handshaked/handshaked/gen/handshake/v1"
)

// TestEveryMethodHasARule: the authorization table covers the whole API, so
// no method falls to the admin-only default by oversight, and names no
// method that does not exist.
func TestEveryMethodHasARule(t *testing.T) {
	methods := map[string]bool{}
	for _, sd := range []grpc.ServiceDesc{pb.KeyVault_ServiceDesc, pb.Handshake_ServiceDesc, pb.Admin_ServiceDesc} {
		for _, m := range sd.Methods {
			methods["/"+sd.ServiceName+"/"+m.MethodName] = true
		}
		for _, st := range sd.Streams {
			methods["/"+sd.ServiceName+"/"+st.StreamName] = true
		}
	}
	for m := range methods {
		if _, ok := rules[m]; !ok {
			t.Errorf("%s has no authorization rule", m)
		}
	}
	for m := range rules {
		if !methods[m] {
			t.Errorf("rule for unknown method %s", m)
		}
	}
}

// TestRuleKeys: each rule's extractor finds the keys in its own request
// type, and a message of the wrong type names the empty key (which only an
// admin passes), never no key at all.
func TestRuleKeys(t *testing.T) {
	for _, tc := range []struct {
		method string
		msg    any
		want   []string
	}{
		{pb.KeyVault_Sign_FullMethodName, &pb.SignRequest{Key: "k", Version: 2}, []string{"k"}},
		{pb.KeyVault_CreateKey_FullMethodName, &pb.CreateKeyRequest{Id: "new"}, []string{"new"}},
		{pb.KeyVault_ImportKey_FullMethodName, &pb.ImportKeyRequest{Id: "imp"}, []string{"imp"}},
		{pb.KeyVault_AttachCertificateChain_FullMethodName, &pb.AttachCertificateChainRequest{Key: "c"}, []string{"c"}},
		{pb.KeyVault_SignStream_FullMethodName, &pb.SignStreamRequest{Request: &pb.SignRequest{Key: "s"}}, []string{"s"}},
		{pb.KeyVault_SignStream_FullMethodName, &pb.SignRequest{Key: "s"}, []string{""}},
		{pb.Handshake_StartHandshake_FullMethodName, &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "a"}, {Key: "b", Version: 3}}}}, []string{"a", "b"}},
		{pb.Handshake_Stream_FullMethodName, &pb.StreamRequest{Request: &pb.StreamRequest_Start{Start: &pb.StartHandshakeRequest{Config: &pb.HandshakeConfig{Keys: []*pb.KeyRef{{Key: "a"}}}}}}, []string{"a"}},
		{pb.Handshake_Stream_FullMethodName, &pb.StreamRequest{Request: &pb.StreamRequest_Input{Input: []byte{22}}}, []string{}},
		{pb.KeyVault_Decrypt_FullMethodName, &pb.GetKeyRequest{Key: "x"}, []string{"x"}},
		{pb.KeyVault_CreateKey_FullMethodName, &pb.SignRequest{Key: "x"}, []string{""}},
	} {
		var got []string
		for _, tg := range rules[tc.method].keys(tc.msg) {
			got = append(got, tg.id)
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s %T: keys %q, want %q", tc.method, tc.msg, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s %T: keys %q, want %q", tc.method, tc.msg, got, tc.want)
			}
		}
	}
}
