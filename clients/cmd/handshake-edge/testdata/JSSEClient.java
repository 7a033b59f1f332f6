// JSSEClient fetches handshake-edge's page over Java's own TLS stack
// (JSSE: an implementation independent of Go's, OpenSSL's and GnuTLS's),
// so that TestJSSEClient can check a Java client completes and resumes
// handshakes through the edge. Run as a single source file (java
// JSSEClient.java ...), which needs no separate compile step.
//
// Arguments: host ca.pem, then one or more runs, each
// "port,protocol,suite,connections,server-name" (suite "-" for JSSE's
// default list). The connections of one run share an SSLContext, so its
// client session cache: every connection after the first offers to resume. For each connection
// it prints "=== run i connection j", the JSSE session's protocol and
// suite, then the page.
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.Security;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.List;
import javax.net.ssl.SNIHostName;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class JSSEClient {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        // JDK 24 and later disable the TLS 1.2 RSA key exchange by default
        // (jdk.tls.disabledAlgorithms lists TLS_RSA_*); the edge offers it,
        // as in the articles the product started from, so the test asks
        // for it. It must be set before JSSE first reads the property.
        String disabled = Security.getProperty("jdk.tls.disabledAlgorithms");
        if (disabled != null) {
            Security.setProperty("jdk.tls.disabledAlgorithms", disabled.replaceAll("\\s*TLS_RSA_\\*\\s*,?", ""));
        }

        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        try (InputStream in = new FileInputStream(args[1])) {
            int i = 0;
            for (Certificate c : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                trust.setCertificateEntry("ca" + i++, c);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);

        for (int r = 2; r < args.length; r++) {
            String[] run = args[r].split(",");
            int port = Integer.parseInt(run[0]);
            String serverName = run[4];
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(null, tmf.getTrustManagers(), null);
            int connections = Integer.parseInt(run[3]);
            for (int c = 0; c < connections; c++) {
                try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(host, port)) {
                    s.setSoTimeout(30000);
                    SSLParameters p = s.getSSLParameters();
                    p.setProtocols(new String[] {run[1]});
                    if (!run[2].equals("-")) {
                        p.setCipherSuites(new String[] {run[2]});
                    }
                    p.setServerNames(List.of(new SNIHostName(serverName)));
                    // Checks the certificate names serverName, as an
                    // HTTPS client does.
                    p.setEndpointIdentificationAlgorithm("HTTPS");
                    s.setSSLParameters(p);
                    s.startHandshake();
                    System.out.println("=== run " + (r - 2) + " connection " + c);
                    System.out.println("JSSE protocol: " + s.getSession().getProtocol());
                    System.out.println("JSSE suite: " + s.getSession().getCipherSuite());
                    OutputStream out = s.getOutputStream();
                    out.write(("GET / HTTP/1.0\r\nHost: " + serverName + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
                    out.flush();
                    ByteArrayOutputStream page = new ByteArrayOutputStream();
                    s.getInputStream().transferTo(page);
                    System.out.println(page.toString(StandardCharsets.UTF_8));
                }
            }
        }
    }
}
