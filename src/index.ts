/** Tessera's public API. */
export { Tessera, DEMO_MODEL_DIR } from './llm.js';
export type { TesseraOptions, GenerateOptions, GenerationChunk, GenerationResult, ModelInfo, ChunkLogprob } from './llm.js';
export type { SamplingParams } from './sampling/params.js';
export type { ChatMessage } from './tokenizer/tokenizer.js';
export type { FinishReason } from './scheduler/sequence.js';
export type { ModelConfig, Architecture } from './formats/hf_config.js';
export { TesseraError, isTesseraError } from './errors.js';
