// Type declarations for daonet-device.mjs, the daonet device runtime (docs/js-device.md).

export declare const WIRE_VERSION: 1;
/** Wire version of the Gaussian mechanism (noise kind gaussian_ldp): values may be negative. */
export declare const SIGNED_WIRE_VERSION: 2;
export declare const DEVICE_FORMAT: "daonet-device-bundle";
export declare const FORMAT_VERSION: 1;
export declare const MASK_CONTEXT: string;
export declare const NOISE_CONTEXT: string;
export declare const LDP_NOISE_CONTEXT: string;
export declare const BUNDLE_CONTEXT: string;
export declare const IDENTIFIABLE_TOL: number;
export declare const RANGE_TOLERANCE: number;
export declare const BLOCK_NOTE: string;
export declare const NOISE_NOTE: string;
export declare const LDP_NOTE: string;

// -- errors (the Python classes of the same names) ----------------------------------------------------------
export declare class DaonetError extends Error {}
/** A missing, tampered, truncated, unsigned, inconsistent or unsupported bundle. */
export declare class BundleError extends DaonetError {}
/** A manifest field is missing, has the wrong type, or contradicts another field. */
export declare class ManifestError extends BundleError {}
/** A bad input: shape, dtype, range, NaN/inf, or a policy the bundle cannot enforce. */
export declare class InputError extends DaonetError {}
export declare class PayloadError extends DaonetError {}
export declare class VersionMismatchError extends DaonetError {
  constructor(message: string, expected: string, got: string);
  expected: string;
  got: string;
}
export declare class ServerError extends DaonetError {
  constructor(status: number, error: string, detail: string);
  status: number;
  error: string;
  detail: string;
}

// -- inputs, masks and payloads -----------------------------------------------------------------------------
export type NumericArray = Uint8Array | Uint8ClampedArray | Int8Array | Int16Array | Uint16Array | Int32Array
  | Uint32Array | Float32Array | Float64Array;
export type NestedNumbers = number | NestedNumbers[];
/** One input (or a batch): a typed array (Uint8Array = 8-bit pixels), nested arrays, or {data, shape}. */
export type DeviceInput = NumericArray | NestedNumbers[] | { data: NumericArray | number[]; shape: number[] };
export type KeepMask = ArrayLike<number | boolean>;

export interface MaskSource {
  masks(x: Float32Array, nOutputs: number, dropRate: number, shape?: number[]): Promise<Uint8Array>;
  noise?(x: Float32Array, where: Uint8Array, nOutputs: number, dropRate: number, shape?: number[]): Promise<Float64Array>;
  /** Integer discrete Gaussian noise at ``where`` (gaussian_ldp), as float64. */
  ldpNoise?(x: Float32Array, where: Uint8Array, nOutputs: number, dropRate: number, noiseSteps: number, shape?: number[]): Promise<Float64Array>;
}

export interface Certificate {
  k: number;
  n: number;
  rank?: number;
  identifiable?: number;
  revealed_energy?: number;
  max_leverage?: number;
  k_before_policy: number;
  dropped_by_policy: number;
  policy_ok: boolean;
  policy: { max_revealed_energy: number | null; forbid_identifiable: boolean; identifiable_tol: number } | null;
  worst_patch?: { index: number; k: number; rank: number; identifiable: number; revealed_energy: number; patch_dim: number };
  exact?: boolean;
  note?: string;
  applies?: false;
  n_outputs?: number;
  block?: string;
}

export interface DevicePayload {
  /** The bytes that may leave the device (wire format v1). */
  data: Uint8Array;
  nnz: number;
  nOutputs: number;
  /** The dropped activation vector (stays on the device). */
  activations: Float32Array;
  certificate: Certificate | null;
}

export interface EncodeOptions {
  masks?: MaskSource | null;
  mask?: KeepMask | null;
  /** Enforce the manifest's privacy policy and return the certificate (default true). */
  certify?: boolean;
  policy?: PrivacyPolicy | null;
}

export interface EncodeManyOptions extends Omit<EncodeOptions, "mask"> {
  /** One keep-mask per input, or null. */
  mask?: KeepMask[] | null;
}

// -- bundles and their verification -------------------------------------------------------------------------
/** A trusted Ed25519 key: .pub PEM text or bytes, the 32 raw bytes, a CryptoKey, or (Node) a .pub file path. */
export type PublicKeySource = string | Uint8Array | ArrayBuffer | CryptoKey | LoadedPublicKey;
export interface LoadedPublicKey {
  key: CryptoKey;
  /** 16 hex characters: the SHA-256 of the raw key (Python's key_id). */
  keyId: string;
}
export interface LoadOptions {
  fetch?: typeof globalThis.fetch;
  /** Refuse the bundle unless one of these keys signed it (none: the version is still checked). */
  publicKeys?: PublicKeySource[];
}
export interface BlockStep {
  op: "dense" | "conv1d" | "conv2d" | "maxpool";
  n_in: number | null;
  n_out: number | null;
  kernel: number[];
  stride: number[];
  padding: number[];
  activation: "relu" | null;
  weight: string | null;
  bias: string | null;
  size: number | null;
  inShape: number[];
  outShape: number[];
}
export interface NoiseSpec { kind: "gaussian"; std: number; floor: number; relativeStd: number }
/** The Gaussian mechanism (``noise.kind: gaussian_ldp``): per-request (epsilon, delta). */
export interface LdpSpec {
  kind: "gaussian_ldp"; std: number; clip: number; grid: number; clipSteps: number; noiseSteps: number;
  epsilon: number; delta: number; sensitivity: number; accountant: string; accountantVersion: string;
}
export interface Tensor { shape: number[]; data: Float32Array }
export type Manifest = Record<string, any>;

/** Load a device bundle from a URL of its directory or (Node) a path, verified as DeviceModel.load does. */
export declare function loadDevice(source: string | URL, options?: LoadOptions): Promise<DeviceModel>;
export declare function loadPublicKey(source: PublicKeySource): Promise<LoadedPublicKey>;
export declare function verifyContent(manifest: Manifest, members: Map<string, string | null>, where: string,
  publicKeys?: PublicKeySource[]): Promise<void>;
export declare function contentDigest(members: Map<string, string | null>, where?: string): Promise<string>;
export declare function parseManifestText(text: string, where?: string): {
  value: any; members: Map<string, string | null> | null; floats: Set<string>;
};
export declare function checkSchema(manifest: Manifest, where?: string, floats?: Set<string>): Record<string, any>;
export declare function checkManifest(manifest: Manifest, where?: string, floats?: Set<string>): {
  steps: BlockStep[]; noise: NoiseSpec | LdpSpec | null;
};
/**
 * Use the WebAssembly SIMD kernels (dense first layer and certificate) where the engine has them (the default), or
 * plain JavaScript (`false`): the same bits either way. Returns whether the kernels are in use.
 */
export declare function useWasmSimd(enabled?: boolean): boolean;
export declare function parseSafetensors(buffer: ArrayBuffer | Uint8Array, name?: string): Record<string, Tensor>;

// -- the device model ---------------------------------------------------------------------------------------
export declare class DeviceModel {
  constructor(manifest: Manifest, tensors: Record<string, Tensor>);
  readonly manifest: Manifest;
  readonly kind: "dense" | "conv1d" | "conv2d";
  readonly inputShape: number[];
  readonly outputShape: number[];
  readonly firstOutputShape: number[];
  readonly nOutputs: number;
  readonly block: BlockStep[];
  readonly noise: NoiseSpec | null;
  readonly ldp: LdpSpec | null;
  readonly wireVersion: 1 | 2;
  readonly dropRate: number;
  readonly valueDtype: "float32" | "float16";
  readonly policy: PrivacyPolicy;
  readonly modelId: string;
  readonly version: string;
  readonly classes: string[];
  readonly rawInputBytes: number;
  readonly isLinear: boolean;
  describeBlock(): string;
  validate(x: DeviceInput): { n: number; data: Float32Array };
  activations(x: DeviceInput): Float32Array;
  certify(x: DeviceInput, sent: ArrayLike<number>): Certificate;
  applyPolicy(x: Float32Array, sent: Float32Array, policy?: PrivacyPolicy): { sent: Float32Array; certificate: Certificate };
  /** One input -> the payload that may leave the device. */
  encode(x: DeviceInput, options?: EncodeOptions): Promise<DevicePayload>;
  /** Buffered inputs -> one payload each, the same bytes as one by one. */
  encodeMany(xs: DeviceInput | DeviceInput[], options?: EncodeManyOptions): Promise<DevicePayload[]>;
}

export declare class PrivacyPolicy {
  constructor(options?: { maxRevealedEnergy?: number | null; forbidIdentifiable?: boolean; identifiableTol?: number });
  static fromManifest(privacy: Manifest | null | undefined): PrivacyPolicy;
  readonly maxRevealedEnergy: number | null;
  readonly forbidIdentifiable: boolean;
  readonly identifiableTol: number;
  readonly active: boolean;
  allows(certificate: Certificate): boolean;
  toDict(): { max_revealed_energy: number | null; forbid_identifiable: boolean; identifiable_tol: number };
}

// -- masks ----------------------------------------------------------------------------------------------------
export declare class RandomMasks implements MaskSource {
  masks(x: Float32Array | null, nOutputs: number, dropRate: number): Promise<Uint8Array>;
  noise(x: Float32Array | null, where: Uint8Array, nOutputs: number): Promise<Float64Array>;
}
interface StorageLike { getItem(name: string): string | null; setItem(name: string, value: string): void }
export declare class KeyedMasks implements MaskSource {
  constructor(key: Uint8Array | ArrayLike<number>, modelVersion?: string, quantum?: number);
  static fromStorage(storage: StorageLike, modelVersion?: string, name?: string): Promise<KeyedMasks>;
  static stream(prk: Uint8Array, nOutputs: number): Promise<Uint32Array>;
  readonly modelVersion: string;
  readonly quantum: number;
  quantize(x: ArrayLike<number>): Int32Array;
  seed(x: ArrayLike<number>, shape: number[], nOutputs: number, dropRate: number): Promise<Uint8Array>;
  masks(x: Float32Array, nOutputs: number, dropRate: number, shape?: number[]): Promise<Uint8Array>;
  noise(x: Float32Array, where: Uint8Array, nOutputs: number, dropRate: number, shape?: number[]): Promise<Float64Array>;
}
export interface SimilarityOptions { quantum?: number; width?: number; groups?: number; dims?: number }
export declare class SimilarityKeyedMasks implements MaskSource {
  constructor(key: Uint8Array | ArrayLike<number>, modelVersion?: string, options?: SimilarityOptions);
  static fromStorage(storage: StorageLike, modelVersion?: string, options?: SimilarityOptions, name?: string): Promise<SimilarityKeyedMasks>;
  readonly modelVersion: string;
  readonly quantum: number;
  readonly width: number;
  readonly groups: number;
  readonly dims: number;
  cellWidth(n: number): number;
  cells(x: ArrayLike<number>): Promise<number[]>;
  masks(x: Float32Array, nOutputs: number, dropRate: number): Promise<Uint8Array>;
  noise(x: Float32Array, where: Uint8Array, nOutputs: number, dropRate: number): Promise<Float64Array>;
}
export declare function indexNoise(prk: Uint8Array, indices: ArrayLike<number>): Float64Array;
/** Replay-safe exact discrete Gaussian N_Z(0, noiseSteps^2) for outputs ``indices`` (``index_discrete_gaussian``). */
export declare function indexDiscreteGaussian(prk: Uint8Array, indices: ArrayLike<number>, noiseSteps: number): Float64Array;

// -- the wire format and the network client -----------------------------------------------------------------
export declare function encodeWire(activations: ArrayLike<number>, modelVersion: string, valueDtype?: "float32" | "float16", wireVersion?: 1 | 2): Uint8Array;
export declare function readFrame(data: Uint8Array): {
  modelVersion: string; indexWidth: number; valueWidth: number; nOutputs: number; nnz: number; offset: number; wireVersion: 1 | 2;
};
export interface Prediction {
  label: string;
  index: number;
  probabilities: number[];
  bytesSent: number;
  nnz: number;
  nOutputs: number;
  modelId: string;
  modelVersion: string;
  latencyMs: number;
  certificate: Certificate | null;
  payload: DevicePayload;
}
export declare class Client {
  constructor(url: string, device: DeviceModel, options?: { apiKey?: string | null; masks?: MaskSource | null; certify?: boolean; fetch?: typeof globalThis.fetch | null });
  readonly url: string;
  readonly device: DeviceModel;
  checkServer(): Promise<{ model_id: string; version: string } & Record<string, any>>;
  encode(x: DeviceInput, options?: { mask?: KeepMask | null }): Promise<DevicePayload>;
  send(payload: DevicePayload): Promise<Prediction>;
  predict(x: DeviceInput, options?: { mask?: KeepMask | null }): Promise<Prediction>;
}

// -- Python-exact number formatting (used in messages and mask seeds) -----------------------------------------
export declare function pyFloatRepr(v: number): string;
export declare function pyFormatG(v: number, p?: number): string;
export declare function roundHalfEven(v: number): number;
export declare function f32ToF16Bits(v: number): number;
