"""Export failures, each with its own exit code.

ExportError (exit code 1)
├── UsageError               2  options that contradict the model (e.g. --threshold on softmax)
├── InputNotFound            3  the model, head or validation path does not exist
├── NotAClassifier           4  a checkpoint without a sequence-classification head
├── UnsupportedArchitecture  5  a model family the exporter does not cover
├── CorruptWeights           6  weights that are missing or cannot be read
├── HeadMismatch             7  a linear head whose width differs from the body's
├── OutputExists             8  the output bundle exists and --force was not given
├── OutputNotWritable        9  the output's parent directory cannot be written
├── BadValidationFile       10  an empty or unreadable validation text file
├── VerificationFailed      11  no requested variant passed the accuracy gate
├── BundleInvalid           12  `verify` found a bundle that does not match its manifest
├── ConversionFailed        13  the model loaded but could not be traced or written as ONNX
├── DoesNotFit              14  no variant that passed the gate fits --max-memory
└── OutOfResources          15  the machine ran out of memory or disk space during the export
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    INPUT_NOT_FOUND = 3
    NOT_A_CLASSIFIER = 4
    UNSUPPORTED_ARCHITECTURE = 5
    CORRUPT_WEIGHTS = 6
    HEAD_MISMATCH = 7
    OUTPUT_EXISTS = 8
    OUTPUT_NOT_WRITABLE = 9
    BAD_VALIDATION_FILE = 10
    VERIFICATION_FAILED = 11
    BUNDLE_INVALID = 12
    CONVERSION_FAILED = 13
    DOES_NOT_FIT = 14
    OUT_OF_RESOURCES = 15


class ExportError(Exception):
    exit_code = ExitCode.FAILURE


class UsageError(ExportError):
    exit_code = ExitCode.USAGE


class InputNotFound(ExportError):
    exit_code = ExitCode.INPUT_NOT_FOUND


class NotAClassifier(ExportError):
    exit_code = ExitCode.NOT_A_CLASSIFIER


class UnsupportedArchitecture(ExportError):
    exit_code = ExitCode.UNSUPPORTED_ARCHITECTURE


class CorruptWeights(ExportError):
    exit_code = ExitCode.CORRUPT_WEIGHTS


class HeadMismatch(ExportError):
    exit_code = ExitCode.HEAD_MISMATCH


class OutputExists(ExportError):
    exit_code = ExitCode.OUTPUT_EXISTS


class OutputNotWritable(ExportError):
    exit_code = ExitCode.OUTPUT_NOT_WRITABLE


class BadValidationFile(ExportError):
    exit_code = ExitCode.BAD_VALIDATION_FILE


class VerificationFailed(ExportError):
    exit_code = ExitCode.VERIFICATION_FAILED


class BundleInvalid(ExportError):
    exit_code = ExitCode.BUNDLE_INVALID


class ConversionFailed(ExportError):
    exit_code = ExitCode.CONVERSION_FAILED


class DoesNotFit(ExportError):
    exit_code = ExitCode.DOES_NOT_FIT


class OutOfResources(ExportError):
    exit_code = ExitCode.OUT_OF_RESOURCES
