"""The Open Inference Protocol's gRPC messages, built from ``inference.proto`` beside this file.

NOTE: not protoc's generated module: that registers its types in protobuf's process-wide pool, where they clash
with a client library's copy of the same protocol (``tritonclient.grpc`` defines ``inference.ModelInferRequest``
too) in one process, and it pins the protobuf runtime to protoc's version. The file's descriptor is kept here as
protoc serialised it and loaded into a pool of our own. After editing the .proto, regenerate ``SERIALIZED`` with
``python -m grpc_tools.protoc -I edgeserve/server --descriptor_set_out=/dev/stdout edgeserve/server/inference.proto``
(the FileDescriptorProto inside the set) or ``--python_out`` and copy the bytes it passes to ``AddSerializedFile``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

SERIALIZED = (
    b'\n\x0finference.proto\x12\tinference"\x13\n\x11ServerLiveRequest"(\n\x12ServerLiveResponse\x12\x12\n\x04l'
    b'ive\x18\x01 \x01(\x08R\x04live"\x14\n\x12ServerReadyRequest"+\n\x13ServerReadyResponse\x12\x14\n\x05ready'
    b'\x18\x01 \x01(\x08R\x05ready"A\n\x11ModelReadyRequest\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18'
    b'\n\x07version\x18\x02 \x01(\tR\x07version"*\n\x12ModelReadyResponse\x12\x14\n\x05ready\x18\x01 \x01(\x08R'
    b'\x05ready"\x17\n\x15ServerMetadataRequest"f\n\x16ServerMetadataResponse\x12\x12\n\x04name\x18\x01 \x01(\t'
    b'R\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version\x12\x1e\n\nextensions\x18\x03 \x03(\tR\nextens'
    b'ions"D\n\x14ModelMetadataRequest\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 '
    b'\x01(\tR\x07version"\xcf\x02\n\x15ModelMetadataResponse\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12'
    b'\x1a\n\x08versions\x18\x02 \x03(\tR\x08versions\x12\x1a\n\x08platform\x18\x03 \x01(\tR\x08platform\x12G\n'
    b'\x06inputs\x18\x04 \x03(\x0b2/.inference.ModelMetadataResponse.TensorMetadataR\x06inputs\x12I\n\x07output'
    b's\x18\x05 \x03(\x0b2/.inference.ModelMetadataResponse.TensorMetadataR\x07outputs\x1aV\n\x0eTensorMetadata'
    b'\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08datatype\x12\x14\n'
    b'\x05shape\x18\x03 \x03(\x03R\x05shape"\xd7\x01\n\x0eInferParameter\x12\x1f\n\nbool_param\x18\x01 \x01('
    b'\x08H\x00R\tboolParam\x12!\n\x0bint64_param\x18\x02 \x01(\x03H\x00R\nint64Param\x12#\n\x0cstring_param'
    b'\x18\x03 \x01(\tH\x00R\x0bstringParam\x12#\n\x0cdouble_param\x18\x04 \x01(\x01H\x00R\x0bdoubleParam\x12#'
    b'\n\x0cuint64_param\x18\x05 \x01(\x04H\x00R\x0buint64ParamB\x12\n\x10parameter_choice"\xc3\x02\n\x13InferT'
    b'ensorContents\x12#\n\rbool_contents\x18\x01 \x03(\x08R\x0cboolContents\x12!\n\x0cint_contents\x18\x02 '
    b'\x03(\x05R\x0bintContents\x12%\n\x0eint64_contents\x18\x03 \x03(\x03R\rint64Contents\x12#\n\ruint_content'
    b"s\x18\x04 \x03(\rR\x0cuintContents\x12'\n\x0fuint64_contents\x18\x05 \x03(\x04R\x0euint64Contents\x12#\n"
    b'\rfp32_contents\x18\x06 \x03(\x02R\x0cfp32Contents\x12#\n\rfp64_contents\x18\x07 \x03(\x01R\x0cfp64Conten'
    b'ts\x12%\n\x0ebytes_contents\x18\x08 \x03(\x0cR\rbytesContents"\x9d\x08\n\x11ModelInferRequest\x12\x1d\n\n'
    b'model_name\x18\x01 \x01(\tR\tmodelName\x12#\n\rmodel_version\x18\x02 \x01(\tR\x0cmodelVersion\x12\x0e\n'
    b'\x02id\x18\x03 \x01(\tR\x02id\x12L\n\nparameters\x18\x04 \x03(\x0b2,.inference.ModelInferRequest.Paramete'
    b'rsEntryR\nparameters\x12E\n\x06inputs\x18\x05 \x03(\x0b2-.inference.ModelInferRequest.InferInputTensorR'
    b'\x06inputs\x12Q\n\x07outputs\x18\x06 \x03(\x0b27.inference.ModelInferRequest.InferRequestedOutputTensorR'
    b'\x07outputs\x12,\n\x12raw_input_contents\x18\x07 \x03(\x0cR\x10rawInputContents\x1a\xcd\x02\n\x10InferInp'
    b'utTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR\x08datatype'
    b'\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12]\n\nparameters\x18\x04 \x03(\x0b2=.inference.ModelInf'
    b'erRequest.InferInputTensor.ParametersEntryR\nparameters\x12:\n\x08contents\x18\x05 \x01(\x0b2\x1e.inferen'
    b'ce.InferTensorContentsR\x08contents\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key'
    b'\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1a\xf3\x01\n\x1aInf'
    b'erRequestedOutputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12g\n\nparameters\x18\x02 \x03(\x0b2G'
    b'.inference.ModelInferRequest.InferRequestedOutputTensor.ParametersEntryR\nparameters\x1aX\n\x0fParameters'
    b'Entry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferPara'
    b'meterR\x05value:\x028\x01\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05va'
    b'lue\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01"\xdf\x05\n\x12ModelInferResponse'
    b'\x12\x1d\n\nmodel_name\x18\x01 \x01(\tR\tmodelName\x12#\n\rmodel_version\x18\x02 \x01(\tR\x0cmodelVersion'
    b'\x12\x0e\n\x02id\x18\x03 \x01(\tR\x02id\x12M\n\nparameters\x18\x04 \x03(\x0b2-.inference.ModelInferRespon'
    b'se.ParametersEntryR\nparameters\x12I\n\x07outputs\x18\x05 \x03(\x0b2/.inference.ModelInferResponse.InferO'
    b'utputTensorR\x07outputs\x12.\n\x13raw_output_contents\x18\x06 \x03(\x0cR\x11rawOutputContents\x1a\xd0\x02'
    b'\n\x11InferOutputTensor\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08datatype\x18\x02 \x01(\tR'
    b'\x08datatype\x12\x14\n\x05shape\x18\x03 \x03(\x03R\x05shape\x12_\n\nparameters\x18\x04 \x03(\x0b2?.infere'
    b'nce.ModelInferResponse.InferOutputTensor.ParametersEntryR\nparameters\x12:\n\x08contents\x18\x05 \x01('
    b'\x0b2\x1e.inference.InferTensorContentsR\x08contents\x1aX\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 '
    b'\x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inference.InferParameterR\x05value:\x028\x01\x1aX'
    b'\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12/\n\x05value\x18\x02 \x01(\x0b2\x19.inf'
    b'erence.InferParameterR\x05value:\x028\x01"B\n\x12ModelConfigRequest\x12\x12\n\x04name\x18\x01 \x01(\tR'
    b'\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"E\n\x13ModelConfigResponse\x12.\n\x06config\x18'
    b'\x01 \x01(\x0b2\x16.inference.ModelConfigR\x06config"*\n\x12ModelTensorReshape\x12\x14\n\x05shape\x18\x01'
    b' \x03(\x03R\x05shape"\x92\x02\n\nModelInput\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x120\n\tdata_type'
    b'\x18\x02 \x01(\x0e2\x13.inference.DataTypeR\x08dataType\x124\n\x06format\x18\x03 \x01(\x0e2\x1c.inference'
    b'.ModelInput.FormatR\x06format\x12\x12\n\x04dims\x18\x04 \x03(\x03R\x04dims\x127\n\x07reshape\x18\x05 \x01'
    b'(\x0b2\x1d.inference.ModelTensorReshapeR\x07reshape";\n\x06Format\x12\x0f\n\x0bFORMAT_NONE\x10\x00\x12'
    b'\x0f\n\x0bFORMAT_NHWC\x10\x01\x12\x0f\n\x0bFORMAT_NCHW\x10\x02"\xa0\x01\n\x0bModelOutput\x12\x12\n\x04nam'
    b'e\x18\x01 \x01(\tR\x04name\x120\n\tdata_type\x18\x02 \x01(\x0e2\x13.inference.DataTypeR\x08dataType\x12'
    b'\x12\n\x04dims\x18\x03 \x03(\x03R\x04dims\x127\n\x07reshape\x18\x05 \x01(\x0b2\x1d.inference.ModelTensorR'
    b'eshapeR\x07reshape"\x92\x01\n\x12ModelVersionPolicy\x12>\n\x06latest\x18\x01 \x01(\x0b2$.inference.ModelV'
    b'ersionPolicy.LatestH\x00R\x06latest\x1a+\n\x06Latest\x12!\n\x0cnum_versions\x18\x01 \x01(\rR\x0bnumVersio'
    b'nsB\x0f\n\rpolicy_choice"\x89\x01\n\x14ModelDynamicBatching\x120\n\x14preferred_batch_size\x18\x01 \x03('
    b'\x05R\x12preferredBatchSize\x12?\n\x1cmax_queue_delay_microseconds\x18\x02 \x01(\x04R\x19maxQueueDelayMic'
    b'roseconds"\xec\x02\n\x0bModelConfig\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x1a\n\x08platform\x18'
    b'\x02 \x01(\tR\x08platform\x12D\n\x0eversion_policy\x18\x03 \x01(\x0b2\x1d.inference.ModelVersionPolicyR\r'
    b'versionPolicy\x12$\n\x0emax_batch_size\x18\x04 \x01(\x05R\x0cmaxBatchSize\x12+\n\x05input\x18\x05 \x03('
    b'\x0b2\x15.inference.ModelInputR\x05input\x12.\n\x06output\x18\x06 \x03(\x0b2\x16.inference.ModelOutputR'
    b'\x06output\x12J\n\x10dynamic_batching\x18\x0b \x01(\x0b2\x1f.inference.ModelDynamicBatchingR\x0fdynamicBa'
    b'tching\x12\x18\n\x07backend\x18\x11 \x01(\tR\x07backend"F\n\x16ModelStatisticsRequest\x12\x12\n\x04name'
    b'\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07version"9\n\x11StatisticDuration\x12'
    b'\x14\n\x05count\x18\x01 \x01(\x04R\x05count\x12\x0e\n\x02ns\x18\x02 \x01(\x04R\x02ns"\xf2\x03\n\x0fInferS'
    b'tatistics\x126\n\x07success\x18\x01 \x01(\x0b2\x1c.inference.StatisticDurationR\x07success\x120\n\x04fail'
    b'\x18\x02 \x01(\x0b2\x1c.inference.StatisticDurationR\x04fail\x122\n\x05queue\x18\x03 \x01(\x0b2\x1c.infer'
    b'ence.StatisticDurationR\x05queue\x12A\n\rcompute_input\x18\x04 \x01(\x0b2\x1c.inference.StatisticDuration'
    b'R\x0ccomputeInput\x12A\n\rcompute_infer\x18\x05 \x01(\x0b2\x1c.inference.StatisticDurationR\x0ccomputeInf'
    b'er\x12C\n\x0ecompute_output\x18\x06 \x01(\x0b2\x1c.inference.StatisticDurationR\rcomputeOutput\x129\n\tca'
    b'che_hit\x18\x07 \x01(\x0b2\x1c.inference.StatisticDurationR\x08cacheHit\x12;\n\ncache_miss\x18\x08 \x01('
    b'\x0b2\x1c.inference.StatisticDurationR\tcacheMiss"\x80\x02\n\x14InferBatchStatistics\x12\x1d\n\nbatch_siz'
    b'e\x18\x01 \x01(\x04R\tbatchSize\x12A\n\rcompute_input\x18\x02 \x01(\x0b2\x1c.inference.StatisticDurationR'
    b'\x0ccomputeInput\x12A\n\rcompute_infer\x18\x03 \x01(\x0b2\x1c.inference.StatisticDurationR\x0ccomputeInfe'
    b'r\x12C\n\x0ecompute_output\x18\x04 \x01(\x0b2\x1c.inference.StatisticDurationR\rcomputeOutput"\xbf\x02\n'
    b'\x0fModelStatistics\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR\x07v'
    b"ersion\x12%\n\x0elast_inference\x18\x03 \x01(\x04R\rlastInference\x12'\n\x0finference_count\x18\x04 \x01("
    b"\x04R\x0einferenceCount\x12'\n\x0fexecution_count\x18\x05 \x01(\x04R\x0eexecutionCount\x12C\n\x0finferenc"
    b'e_stats\x18\x06 \x01(\x0b2\x1a.inference.InferStatisticsR\x0einferenceStats\x12@\n\x0bbatch_stats\x18\x07'
    b' \x03(\x0b2\x1f.inference.InferBatchStatisticsR\nbatchStats"V\n\x17ModelStatisticsResponse\x12;\n\x0bmode'
    b'l_stats\x18\x01 \x03(\x0b2\x1a.inference.ModelStatisticsR\nmodelStats"\x85\x01\n\x18ModelStreamInferRespo'
    b'nse\x12#\n\rerror_message\x18\x01 \x01(\tR\x0cerrorMessage\x12D\n\x0einfer_response\x18\x02 \x01(\x0b2'
    b'\x1d.inference.ModelInferResponseR\rinferResponse"W\n\x16RepositoryIndexRequest\x12\'\n\x0frepository_nam'
    b'e\x18\x01 \x01(\tR\x0erepositoryName\x12\x14\n\x05ready\x18\x02 \x01(\x08R\x05ready"\xca\x01\n\x17Reposit'
    b'oryIndexResponse\x12E\n\x06models\x18\x01 \x03(\x0b2-.inference.RepositoryIndexResponse.ModelIndexR\x06mo'
    b'dels\x1ah\n\nModelIndex\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x18\n\x07version\x18\x02 \x01(\tR'
    b'\x07version\x12\x14\n\x05state\x18\x03 \x01(\tR\x05state\x12\x16\n\x06reason\x18\x04 \x01(\tR\x06reason"'
    b'\xba\x01\n\x18ModelRepositoryParameter\x12\x1f\n\nbool_param\x18\x01 \x01(\x08H\x00R\tboolParam\x12!\n'
    b'\x0bint64_param\x18\x02 \x01(\x03H\x00R\nint64Param\x12#\n\x0cstring_param\x18\x03 \x01(\tH\x00R\x0bstrin'
    b'gParam\x12!\n\x0bbytes_param\x18\x04 \x01(\x0cH\x00R\nbytesParamB\x12\n\x10parameter_choice"\x9f\x02\n'
    b"\x1aRepositoryModelLoadRequest\x12'\n\x0frepository_name\x18\x01 \x01(\tR\x0erepositoryName\x12\x1d\n\nmo"
    b'del_name\x18\x02 \x01(\tR\tmodelName\x12U\n\nparameters\x18\x03 \x03(\x0b25.inference.RepositoryModelLoad'
    b'Request.ParametersEntryR\nparameters\x1ab\n\x0fParametersEntry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key'
    b'\x129\n\x05value\x18\x02 \x01(\x0b2#.inference.ModelRepositoryParameterR\x05value:\x028\x01"\x1d\n\x1bRep'
    b'ositoryModelLoadResponse"\xa3\x02\n\x1cRepositoryModelUnloadRequest\x12\'\n\x0frepository_name\x18\x01 '
    b'\x01(\tR\x0erepositoryName\x12\x1d\n\nmodel_name\x18\x02 \x01(\tR\tmodelName\x12W\n\nparameters\x18\x03 '
    b'\x03(\x0b27.inference.RepositoryModelUnloadRequest.ParametersEntryR\nparameters\x1ab\n\x0fParametersEntry'
    b'\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x129\n\x05value\x18\x02 \x01(\x0b2#.inference.ModelRepositoryPa'
    b'rameterR\x05value:\x028\x01"\x1f\n\x1dRepositoryModelUnloadResponse"5\n\x1fSystemSharedMemoryStatusReques'
    b't\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name"\xd7\x02\n SystemSharedMemoryStatusResponse\x12R\n\x07region'
    b's\x18\x01 \x03(\x0b28.inference.SystemSharedMemoryStatusResponse.RegionsEntryR\x07regions\x1ai\n\x0cRegio'
    b'nStatus\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name\x12\x10\n\x03key\x18\x02 \x01(\tR\x03key\x12\x16\n\x06'
    b'offset\x18\x03 \x01(\x04R\x06offset\x12\x1b\n\tbyte_size\x18\x04 \x01(\x04R\x08byteSize\x1at\n\x0cRegions'
    b'Entry\x12\x10\n\x03key\x18\x01 \x01(\tR\x03key\x12N\n\x05value\x18\x02 \x01(\x0b28.inference.SystemShared'
    b'MemoryStatusResponse.RegionStatusR\x05value:\x028\x01"~\n!SystemSharedMemoryRegisterRequest\x12\x12\n\x04'
    b'name\x18\x01 \x01(\tR\x04name\x12\x10\n\x03key\x18\x02 \x01(\tR\x03key\x12\x16\n\x06offset\x18\x03 \x01('
    b'\x04R\x06offset\x12\x1b\n\tbyte_size\x18\x04 \x01(\x04R\x08byteSize"$\n"SystemSharedMemoryRegisterRespons'
    b'e"9\n#SystemSharedMemoryUnregisterRequest\x12\x12\n\x04name\x18\x01 \x01(\tR\x04name"&\n$SystemSharedMemo'
    b'ryUnregisterResponse*\xeb\x01\n\x08DataType\x12\x10\n\x0cTYPE_INVALID\x10\x00\x12\r\n\tTYPE_BOOL\x10\x01'
    b'\x12\x0e\n\nTYPE_UINT8\x10\x02\x12\x0f\n\x0bTYPE_UINT16\x10\x03\x12\x0f\n\x0bTYPE_UINT32\x10\x04\x12\x0f'
    b'\n\x0bTYPE_UINT64\x10\x05\x12\r\n\tTYPE_INT8\x10\x06\x12\x0e\n\nTYPE_INT16\x10\x07\x12\x0e\n\nTYPE_INT32'
    b'\x10\x08\x12\x0e\n\nTYPE_INT64\x10\t\x12\r\n\tTYPE_FP16\x10\n\x12\r\n\tTYPE_FP32\x10\x0b\x12\r\n\tTYPE_FP'
    b'64\x10\x0c\x12\x0f\n\x0bTYPE_STRING\x10\r2\xaf\x0b\n\x14GRPCInferenceService\x12K\n\nServerLive\x12\x1c.i'
    b'nference.ServerLiveRequest\x1a\x1d.inference.ServerLiveResponse"\x00\x12N\n\x0bServerReady\x12\x1d.infere'
    b'nce.ServerReadyRequest\x1a\x1e.inference.ServerReadyResponse"\x00\x12K\n\nModelReady\x12\x1c.inference.Mo'
    b'delReadyRequest\x1a\x1d.inference.ModelReadyResponse"\x00\x12W\n\x0eServerMetadata\x12 .inference.ServerM'
    b'etadataRequest\x1a!.inference.ServerMetadataResponse"\x00\x12T\n\rModelMetadata\x12\x1f.inference.ModelMe'
    b'tadataRequest\x1a .inference.ModelMetadataResponse"\x00\x12K\n\nModelInfer\x12\x1c.inference.ModelInferRe'
    b'quest\x1a\x1d.inference.ModelInferResponse"\x00\x12N\n\x0bModelConfig\x12\x1d.inference.ModelConfigReques'
    b't\x1a\x1e.inference.ModelConfigResponse"\x00\x12Z\n\x0fModelStatistics\x12!.inference.ModelStatisticsRequ'
    b'est\x1a".inference.ModelStatisticsResponse"\x00\x12[\n\x10ModelStreamInfer\x12\x1c.inference.ModelInferRe'
    b'quest\x1a#.inference.ModelStreamInferResponse"\x00(\x010\x01\x12Z\n\x0fRepositoryIndex\x12!.inference.Rep'
    b'ositoryIndexRequest\x1a".inference.RepositoryIndexResponse"\x00\x12f\n\x13RepositoryModelLoad\x12%.infere'
    b'nce.RepositoryModelLoadRequest\x1a&.inference.RepositoryModelLoadResponse"\x00\x12l\n\x15RepositoryModelU'
    b'nload\x12\'.inference.RepositoryModelUnloadRequest\x1a(.inference.RepositoryModelUnloadResponse"\x00\x12u'
    b'\n\x18SystemSharedMemoryStatus\x12*.inference.SystemSharedMemoryStatusRequest\x1a+.inference.SystemShared'
    b'MemoryStatusResponse"\x00\x12{\n\x1aSystemSharedMemoryRegister\x12,.inference.SystemSharedMemoryRegisterR'
    b'equest\x1a-.inference.SystemSharedMemoryRegisterResponse"\x00\x12\x81\x01\n\x1cSystemSharedMemoryUnregist'
    b'er\x12..inference.SystemSharedMemoryUnregisterRequest\x1a/.inference.SystemSharedMemoryUnregisterResponse'
    b'"\x00b\x06proto3'
)

_POOL = descriptor_pool.DescriptorPool()
FILE = _POOL.AddSerializedFile(SERIALIZED)
SERVICE = "inference.GRPCInferenceService"


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelConfigRequest = _message("ModelConfigRequest")
ModelConfigResponse = _message("ModelConfigResponse")
ModelStatisticsRequest = _message("ModelStatisticsRequest")
ModelStatisticsResponse = _message("ModelStatisticsResponse")
StatisticDuration = _message("StatisticDuration")
ModelStreamInferResponse = _message("ModelStreamInferResponse")
RepositoryIndexRequest = _message("RepositoryIndexRequest")
RepositoryIndexResponse = _message("RepositoryIndexResponse")
RepositoryModelLoadRequest = _message("RepositoryModelLoadRequest")
RepositoryModelLoadResponse = _message("RepositoryModelLoadResponse")
RepositoryModelUnloadRequest = _message("RepositoryModelUnloadRequest")
RepositoryModelUnloadResponse = _message("RepositoryModelUnloadResponse")
SystemSharedMemoryStatusRequest = _message("SystemSharedMemoryStatusRequest")
SystemSharedMemoryStatusResponse = _message("SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterRequest = _message("SystemSharedMemoryRegisterRequest")
SystemSharedMemoryRegisterResponse = _message("SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterRequest = _message("SystemSharedMemoryUnregisterRequest")
SystemSharedMemoryUnregisterResponse = _message("SystemSharedMemoryUnregisterResponse")
