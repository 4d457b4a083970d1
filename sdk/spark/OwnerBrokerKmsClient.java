package cscore.spark;

import java.io.IOException;
import java.io.InputStream;
import java.math.BigInteger;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.Key;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.interfaces.ECPrivateKey;
import java.security.interfaces.ECPublicKey;
import java.security.spec.ECFieldFp;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.time.Duration;
import java.util.Base64;
import java.util.Collection;
import java.util.Locale;
import javax.crypto.Cipher;
import javax.crypto.KeyAgreement;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.ParquetCryptoRuntimeException;
import org.apache.parquet.crypto.keytools.KmsClient;

// Parquet-MR ships Jackson relocated (parquet-jackson, a dependency of parquet-hadoop): no other jar is needed.
import shaded.parquet.com.fasterxml.jackson.databind.JsonNode;
import shaded.parquet.com.fasterxml.jackson.databind.ObjectMapper;
import shaded.parquet.com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * Parquet-MR's KMS client for the data owner's cscore key broker: unwraps the key-encryption keys of the
 * owner's PME result files (footer and columns under the batch's result key) through the broker's owner
 * unwrap, the same call as the Python owner client (sdk/broker_admin.py). Wire format: wire/owner_unwrap.py;
 * the constants below are held equal to it by tests/wire/test_owner_unwrap.py.
 *
 * <p>Hadoop configuration (Spark: {@code spark.hadoop.*} or {@code sparkContext.hadoopConfiguration}):
 * <ul>
 *   <li>{@code parquet.crypto.factory.class} = org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory</li>
 *   <li>{@code parquet.encryption.kms.client.class} = cscore.spark.OwnerBrokerKmsClient</li>
 *   <li>{@code parquet.encryption.kms.instance.url} = the owner broker's URL (https; http only on loopback)</li>
 *   <li>{@code parquet.encryption.key.access.token} = the owner's broker admin token</li>
 *   <li>{@code cscore.broker.ca} = PEM bundle the broker's TLS certificate must chain to (else
 *       $CSCORE_BROKER_CA, else the JVM's trust store)</li>
 *   <li>{@code cscore.batch.id} = the batch being read, named in the broker's decision log (optional)</li>
 * </ul>
 *
 * <p>Reading only: results are written (and their keys wrapped) by the workers, so {@link #wrapKey} refuses.
 * A refusal by the broker (wrong token: 401) raises {@link KeyAccessDeniedException}; any other failure
 * {@link ParquetCryptoRuntimeException}; both name the broker, the key and the broker's problem detail,
 * never the token or a key. The key comes back as a JWE to a per-call ephemeral P-256 key.
 */
public final class OwnerBrokerKmsClient implements KmsClient {
  // wire/owner_unwrap.py
  static final String PATH = "/admin/v0/unwrap";
  static final String JWE_ALG = "ECDH-ES+A256KW";
  static final String JWE_ENC = "A256GCM";
  static final String RECIPIENT_CURVE = "P-256";
  static final String RESPONSE_FIELD = "jwe";

  public static final String CA_PROPERTY = "cscore.broker.ca";
  public static final String BATCH_PROPERTY = "cscore.batch.id";
  static final String CA_ENV = "CSCORE_BROKER_CA";
  static final Duration TIMEOUT = Duration.ofSeconds(30);
  private static final int KEY_BITS = 256;
  private static final int TAG_BYTES = 16;
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final Base64.Decoder B64URL = Base64.getUrlDecoder();
  private static final Base64.Encoder B64URL_OUT = Base64.getUrlEncoder().withoutPadding();

  private URI endpoint;
  private String broker;
  private String token;
  private String batchId;
  private HttpClient http;

  @Override
  public void initialize(Configuration conf, String kmsInstanceID, String kmsInstanceURL, String accessToken) {
    if (accessToken == null || accessToken.isEmpty() || KEY_ACCESS_TOKEN_DEFAULT.equals(accessToken)) {
      throw new KeyAccessDeniedException("cscore owner broker: no access token; set "
          + "parquet.encryption.key.access.token to the owner's broker admin token (<state>/owner/broker-admin-token)");
    }
    if (kmsInstanceURL == null || kmsInstanceURL.isEmpty() || KMS_INSTANCE_URL_DEFAULT.equals(kmsInstanceURL)) {
      throw new ParquetCryptoRuntimeException("cscore owner broker: no URL; set parquet.encryption.kms.instance.url "
          + "to the owner's key broker (CSCORE_OWNER_BROKER_URL)");
    }
    broker = kmsInstanceURL.replaceAll("/+$", "");
    URI base = URI.create(broker);
    checkTransport(base);
    endpoint = URI.create(broker + PATH);
    token = accessToken;
    batchId = conf.getTrimmed(BATCH_PROPERTY, "");
    String ca = conf.getTrimmed(CA_PROPERTY, "");
    if (ca.isEmpty() && System.getenv(CA_ENV) != null) {
      ca = System.getenv(CA_ENV).trim();
    }
    HttpClient.Builder builder = HttpClient.newBuilder().connectTimeout(TIMEOUT);
    if (!ca.isEmpty()) {
      builder.sslContext(trusting(Path.of(ca)));
    }
    http = builder.build();
  }

  @Override
  public String wrapKey(byte[] keyBytes, String masterKeyIdentifier) {
    throw new ParquetCryptoRuntimeException("cscore owner broker: this client only reads; results are written "
        + "by the workers (asked to wrap under '" + masterKeyIdentifier + "')");
  }

  @Override
  public byte[] unwrapKey(String wrappedKey, String masterKeyIdentifier) {
    KeyPair recipient = ephemeral();
    HttpResponse<String> response = post(requestBody(wrappedKey, masterKeyIdentifier, recipient));
    int status = response.statusCode();
    if (status == 401 || status == 403) {
      throw new KeyAccessDeniedException(refusal(status, response.body(), masterKeyIdentifier));
    }
    if (status / 100 != 2) {
      throw new ParquetCryptoRuntimeException(refusal(status, response.body(), masterKeyIdentifier));
    }
    JsonNode jwe = readJson(response.body(), "answer").path(RESPONSE_FIELD);
    if (!jwe.isTextual()) {
      throw new ParquetCryptoRuntimeException("cscore owner broker at " + broker + ": answer for key '"
          + masterKeyIdentifier + "' has no '" + RESPONSE_FIELD + "' string");
    }
    return decryptJwe(jwe.asText(), (ECPrivateKey) recipient.getPrivate());
  }

  private String requestBody(String wrappedKey, String keyId, KeyPair recipient) {
    ObjectNode body = JSON.createObjectNode();
    body.put("key_id", keyId);
    body.put("wrapped", wrappedKey);
    body.set("recipient_jwk", publicJwk((ECPublicKey) recipient.getPublic()));
    if (!batchId.isEmpty()) {
      body.put("batch_id", batchId);
    }
    return body.toString();
  }

  private HttpResponse<String> post(String body) {
    HttpRequest request = HttpRequest.newBuilder(endpoint).timeout(TIMEOUT)
        .header("Authorization", "Bearer " + token)
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8)).build();
    try {
      return http.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
    } catch (IOException e) {
      throw new ParquetCryptoRuntimeException("cscore owner broker at " + broker + " did not answer: " + e, e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new ParquetCryptoRuntimeException("cscore owner broker at " + broker + ": interrupted", e);
    }
  }

  private String refusal(int status, String body, String keyId) {
    String detail;
    try {
      JsonNode problem = JSON.readTree(body);
      detail = problem.hasNonNull("detail") ? problem.get("detail").asText() : body;
    } catch (IOException e) {
      detail = body;
    }
    if (detail.length() > 500) {
      detail = detail.substring(0, 500);
    }
    return "cscore owner broker at " + broker + " refused to unwrap under key '" + keyId + "' (HTTP " + status
        + "): " + detail;
  }

  /** https, or plain http to a loopback host only (the rule of wire/endpoint.py). */
  static void checkTransport(URI url) {
    String scheme = url.getScheme() == null ? "" : url.getScheme().toLowerCase(Locale.ROOT);
    String host = url.getHost() == null ? "" : url.getHost();
    if (scheme.equals("https") || (scheme.equals("http") && isLoopback(host))) {
      return;
    }
    throw new ParquetCryptoRuntimeException("cscore owner broker URL " + url + ": expected https:// (plain http:// "
        + "only to 127.0.0.1, ::1 or localhost), got " + (scheme.isEmpty() ? "no scheme" : scheme + "://" + host));
  }

  static boolean isLoopback(String host) {
    String bare = host.replaceAll("^\\[|\\]$", "").toLowerCase(Locale.ROOT);
    if (bare.equals("localhost")) {
      return true;
    }
    boolean v4 = bare.matches("\\d{1,3}(\\.\\d{1,3}){3}");
    if (!v4 && !bare.contains(":")) {
      return false;  // a name: never resolved here, so never trusted as loopback
    }
    try {
      InetAddress address = InetAddress.getByName(bare);  // a literal: no lookup
      return address.isLoopbackAddress() && (v4 || address instanceof Inet6Address);
    } catch (IOException e) {
      return false;
    }
  }

  private static SSLContext trusting(Path bundle) {
    try (InputStream in = Files.newInputStream(bundle)) {
      Collection<? extends Certificate> certs = CertificateFactory.getInstance("X.509").generateCertificates(in);
      if (certs.isEmpty()) {
        throw new ParquetCryptoRuntimeException("cscore.broker.ca " + bundle + ": expected PEM certificates, found none");
      }
      KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
      store.load(null, null);
      int index = 0;
      for (Certificate cert : certs) {
        store.setCertificateEntry("ca-" + index++, cert);
      }
      TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
      trust.init(store);
      SSLContext context = SSLContext.getInstance("TLS");
      context.init(null, trust.getTrustManagers(), null);
      return context;
    } catch (IOException | GeneralSecurityException e) {
      throw new ParquetCryptoRuntimeException("cscore.broker.ca " + bundle + ": cannot read it as PEM: " + e, e);
    }
  }

  private static KeyPair ephemeral() {
    try {
      KeyPairGenerator generator = KeyPairGenerator.getInstance("EC");
      generator.initialize(new ECGenParameterSpec("secp256r1"));  // JOSE's P-256
      return generator.generateKeyPair();
    } catch (GeneralSecurityException e) {
      throw new ParquetCryptoRuntimeException("cannot make a P-256 key: " + e, e);
    }
  }

  private static ObjectNode publicJwk(ECPublicKey key) {
    ObjectNode jwk = JSON.createObjectNode();
    jwk.put("kty", "EC");
    jwk.put("crv", RECIPIENT_CURVE);
    jwk.put("x", B64URL_OUT.encodeToString(unsigned(key.getW().getAffineX())));
    jwk.put("y", B64URL_OUT.encodeToString(unsigned(key.getW().getAffineY())));
    return jwk;
  }

  /** A coordinate as the 32 big-endian bytes JWK wants (RFC 7518 6.2.1.2). */
  private static byte[] unsigned(BigInteger value) {
    byte[] raw = value.toByteArray();
    byte[] out = new byte[KEY_BITS / 8];
    int take = Math.min(raw.length, out.length);
    System.arraycopy(raw, raw.length - take, out, out.length - take, take);
    return out;
  }

  /** Compact JWE, alg ECDH-ES+A256KW, enc A256GCM (RFC 7516, RFC 7518 4.6 and 5.3), to `recipient`. */
  static byte[] decryptJwe(String compact, ECPrivateKey recipient) {
    String[] parts = compact.split("\\.", -1);
    if (parts.length != 5) {
      throw new ParquetCryptoRuntimeException("owner broker's JWE: expected 5 parts, got " + parts.length);
    }
    JsonNode header = readJson(new String(B64URL.decode(parts[0]), StandardCharsets.UTF_8), "JWE header");
    expect(header, "alg", JWE_ALG);
    expect(header, "enc", JWE_ENC);
    if (header.has("zip") || header.has("crit")) {
      throw new ParquetCryptoRuntimeException("owner broker's JWE: 'zip' and 'crit' are not accepted");
    }
    JsonNode epk = header.path("epk");
    expect(epk, "kty", "EC");
    expect(epk, "crv", RECIPIENT_CURVE);
    try {
      ECParameterSpec curve = recipient.getParams();
      ECPublicKey sender = onCurve(new BigInteger(1, B64URL.decode(epk.path("x").asText())),
          new BigInteger(1, B64URL.decode(epk.path("y").asText())), curve);
      KeyAgreement agreement = KeyAgreement.getInstance("ECDH");
      agreement.init(recipient);
      agreement.doPhase(sender, true);
      byte[] kek = concatKdf(agreement.generateSecret(), optional(header, "apu"), optional(header, "apv"));
      Cipher keyWrap = Cipher.getInstance("AESWrap");
      keyWrap.init(Cipher.UNWRAP_MODE, new SecretKeySpec(kek, "AES"));
      Key cek = keyWrap.unwrap(B64URL.decode(parts[1]), "AES", Cipher.SECRET_KEY);
      byte[] iv = B64URL.decode(parts[2]);
      byte[] ciphertext = B64URL.decode(parts[3]);
      byte[] tag = B64URL.decode(parts[4]);
      if (cek.getEncoded().length != KEY_BITS / 8 || tag.length != TAG_BYTES) {
        throw new ParquetCryptoRuntimeException("owner broker's JWE: content key or tag of the wrong size");
      }
      Cipher gcm = Cipher.getInstance("AES/GCM/NoPadding");
      gcm.init(Cipher.DECRYPT_MODE, cek, new GCMParameterSpec(TAG_BYTES * 8, iv));
      gcm.updateAAD(parts[0].getBytes(StandardCharsets.US_ASCII));
      return gcm.doFinal(ByteBuffer.allocate(ciphertext.length + tag.length).put(ciphertext).put(tag).array());
    } catch (GeneralSecurityException | IllegalArgumentException e) {
      throw new ParquetCryptoRuntimeException("owner broker's JWE does not decrypt to this call's key: " + e, e);
    }
  }

  private static ECPublicKey onCurve(BigInteger x, BigInteger y, ECParameterSpec curve)
      throws GeneralSecurityException {
    BigInteger p = ((ECFieldFp) curve.getCurve().getField()).getP();
    BigInteger left = y.multiply(y).mod(p);
    BigInteger right = x.pow(3).add(curve.getCurve().getA().multiply(x)).add(curve.getCurve().getB()).mod(p);
    if (x.signum() < 0 || x.compareTo(p) >= 0 || y.signum() < 0 || y.compareTo(p) >= 0 || !left.equals(right)) {
      throw new GeneralSecurityException("epk is not a point of P-256");
    }
    return (ECPublicKey) KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(new ECPoint(x, y), curve));
  }

  /** RFC 7518 4.6.2 (NIST SP 800-56A Concat KDF, SHA-256): one round gives the 256-bit AES key-wrap key. */
  private static byte[] concatKdf(byte[] z, byte[] apu, byte[] apv) throws GeneralSecurityException {
    MessageDigest sha = MessageDigest.getInstance("SHA-256");
    sha.update(new byte[] {0, 0, 0, 1});
    sha.update(z);
    lengthPrefixed(sha, JWE_ALG.getBytes(StandardCharsets.US_ASCII));
    lengthPrefixed(sha, apu);
    lengthPrefixed(sha, apv);
    sha.update(ByteBuffer.allocate(4).putInt(KEY_BITS).array());
    return sha.digest();
  }

  private static void lengthPrefixed(MessageDigest sha, byte[] value) {
    sha.update(ByteBuffer.allocate(4).putInt(value.length).array());
    sha.update(value);
  }

  private static byte[] optional(JsonNode header, String field) {
    return header.hasNonNull(field) ? B64URL.decode(header.get(field).asText()) : new byte[0];
  }

  private static void expect(JsonNode node, String field, String expected) {
    String actual = node.path(field).asText(null);
    if (!expected.equals(actual)) {
      throw new ParquetCryptoRuntimeException("owner broker's JWE: " + field + " expected " + expected + ", got "
          + actual);
    }
  }

  private static JsonNode readJson(String text, String what) {
    try {
      return JSON.readTree(text);
    } catch (IOException e) {
      throw new ParquetCryptoRuntimeException("cscore owner broker: " + what + " is not JSON: " + e.getMessage(), e);
    }
  }
}
